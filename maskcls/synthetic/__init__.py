"""The synthetic stand-in for the competition data (synthetic_data.py is its command line).

persons.py decides who the persons are (sex, written age, id, file quirks, label noise), look.py draws each
person's identity, render.py paints their 7 photos, writer.py writes the dataset's files and its summary.
"""
