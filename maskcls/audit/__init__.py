"""Label audit (audit_labels.py is the command line): the train labels the out-of-fold predictions disagree with.

table.py reads a K-fold recipe's runs into one table of every train person's 7 images (labels and
probabilities) and checks that they cover the data once and were trained alike; scoring.py decides which
labels are suspect (per-task probabilities, a person's images combined, confident learning with cleanlab);
report.py writes what the audit found (label_audit.csv's rows, the suggested fixes, the contact sheet).
"""
