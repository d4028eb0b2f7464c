"""Pretrained backbone weights for models.timm_backbone: timm's hub weights or a local weights file, with every
problem a one-line ``UserError``.

    model = from_hub("resnet18", {"num_classes": 0})               # --pretrained (the default)
    model = from_local_file("resnet18", Path("r18.pth"), {})      # --weights PATH

``from_hub`` loads from the local cache when a previous download left the file there, with no network access;
when the weights cannot be downloaded (offline, HF_HUB_OFFLINE, host unreachable), a one-line ``UserError``
names ``--no-pretrained`` and ``--weights PATH``, after a probe of a few seconds instead of huggingface_hub's
retries. ``from_local_file`` loads a timm state_dict saved as ``.pth`` or ``.safetensors`` through timm's own
pretrained-loading path, so classifier removal and input-conv adaptation behave exactly as for hub weights.
timm is imported inside the functions, as in models.py.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from maskcls.utils import UserError

if TYPE_CHECKING:
    from torch import nn

# Seconds to wait for the weights host before declaring it unreachable. huggingface_hub itself retries a
# failed connection 5 times with back-off (about 25 s per file, two files: ~50 s) before giving up.
PROBE_TIMEOUT_S = 5.0
_FIX = "train from scratch with --no-pretrained, or pass a local backbone file with --weights PATH (.pth/.safetensors)"


def from_local_file(timm_name: str, path: Path, kwargs: dict) -> nn.Module:
    """``timm.create_model`` with the backbone weights of a local ``.pth``/``.safetensors`` file (--weights)."""
    import timm

    if not path.is_file():
        raise UserError(f"weights file {path} not found; pass an existing .pth/.safetensors backbone file to --weights")
    try:
        # Read once here to check the file is what it should be: timm loads non-strictly when the
        # classifier is replaced, so a file of the wrong kind would otherwise leave the backbone random.
        state = timm.models.load_state_dict(str(path))
    except Exception as e:
        raise UserError(
            f"cannot read weights file {path} ({_one_line(e)}); --weights takes a backbone state_dict "
            f"saved with torch.save or safetensors"
        ) from None
    if "model_state" in state:
        raise UserError(
            f"{path} is a maskcls checkpoint, not a backbone weights file; --weights takes timm backbone "
            f"weights (.pth/.safetensors)"
        )
    try:
        model = timm.create_model(timm_name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
    except RuntimeError as e:  # size mismatches from load_state_dict
        raise UserError(f"weights file {path} does not fit {timm_name}: {_one_line(e)}") from None
    classifier = model.pretrained_cfg.get("classifier") or ()
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    missing = [
        k
        for k in model.state_dict()
        if k not in state and not k.endswith("num_batches_tracked") and not k.startswith(tuple(h + "." for h in heads))
    ]
    if missing:
        raise UserError(
            f"weights file {path} lacks {len(missing)} tensor(s) of {timm_name} (e.g. {', '.join(missing[:3])}); "
            f"is it a {timm_name} backbone state_dict?"
        )
    return model


def from_hub(timm_name: str, kwargs: dict) -> nn.Module:
    """``timm.create_model(pretrained=True)``: from the local cache when the file is there, else downloaded."""
    import timm

    cfg = timm.models.get_pretrained_cfg(timm_name)
    source = _weights_source(cfg)
    if source is None:
        raise UserError(f"timm has no pretrained weights for {timm_name}; {_FIX}")
    kind, where = source
    origin = f"the Hugging Face hub ({where})" if kind == "hf" else where
    cached = _cached_weights(cfg, kind, where)
    if cached is not None and not cfg.custom_load:
        # Load the cached file directly: with a cached file, huggingface_hub still asks the hub for a newer
        # version first and, offline, retries for ~25 s before falling back to the cache.
        return timm.create_model(timm_name, pretrained=True, pretrained_cfg_overlay={"file": str(cached)}, **kwargs)
    reason = _unreachable(kind, where)
    if reason:
        raise UserError(f"could not download pretrained weights for {timm_name} from {origin} ({reason}); {_FIX}")
    try:
        return timm.create_model(timm_name, pretrained=True, **kwargs)
    except Exception as e:
        if not _is_download_error(e):
            raise
        raise UserError(
            f"could not download pretrained weights for {timm_name} from {origin} ({_one_line(e)}); {_FIX}"
        ) from None


def _weights_source(cfg) -> tuple[str, str] | None:
    """("hf", "repo[@revision]") or ("url", url), in the order timm prefers them; None without weights."""
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        return "hf", cfg.hf_hub_id
    if cfg.url:
        return "url", cfg.url
    return None


def _cached_weights(cfg, kind: str, where: str) -> Path | None:
    """The weights file of timm's default source if a previous download left it in the local cache."""
    if kind == "url":
        import torch

        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(where).path)
        return path if path.is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    repo, _, revision = where.partition("@")
    # timm prefers a .safetensors twin of the file it is told to fetch (default pytorch_model.bin).
    filename = cfg.hf_hub_filename or "pytorch_model.bin"
    twin = "model.safetensors" if filename == "pytorch_model.bin" else str(Path(filename).with_suffix(".safetensors"))
    for name in dict.fromkeys((twin, filename)):
        found = try_to_load_from_cache(repo, name, revision=revision or None)
        if isinstance(found, str):
            return Path(found)
    return None


def _unreachable(kind: str, where: str) -> str | None:
    """Why the weights host cannot be reached, or None when it answers (or we cannot tell)."""
    if kind == "hf":
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            return "HF_HUB_OFFLINE is set"
        url = urlparse(constants.ENDPOINT)
    else:
        url = urlparse(where)
    if any(os.environ.get(v) for v in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")):
        return None  # behind a proxy a direct connection proves nothing: let the real download decide
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    if not host:
        return None
    return probe_host(host, port, PROBE_TIMEOUT_S)


def probe_host(host: str, port: int, timeout: float) -> str | None:
    """Try a TCP connection; return the failure as text, or None if it connected.

    Runs in a daemon thread so a hanging DNS lookup (which ignores socket timeouts) cannot stall us.
    """
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as e:
            outcome.append(f"cannot reach {host}:{port}: {e.strerror or e}")

    thread = threading.Thread(target=connect, daemon=True, name=f"probe-{host}")
    thread.start()
    thread.join(timeout + 1.0)
    return outcome[0] if outcome else f"no answer from {host}:{port} within {timeout:.0f} s"


_NETWORK_PACKAGES = {"huggingface_hub", "httpx", "httpx2", "httpcore", "httpcore2", "requests", "urllib3"}


def _is_download_error(e: BaseException) -> bool:
    # huggingface_hub's errors are OSErrors, but its HTTP client's (httpx) are not.
    return isinstance(e, OSError) or type(e).__module__.split(".")[0] in _NETWORK_PACKAGES


def _one_line(e: BaseException, limit: int = 300) -> str:
    text = "; ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
