"""Backbones and heads: timm models behind a registry of the competition's backbone aliases.

    from maskcls.models import create_model, logits_to_probs
    model = create_model("EffB3", head="multi", pretrained=False)  # or "timm:convnext_tiny" / "convnext_tiny"
    probs = logits_to_probs(model(images), model.head_type)         # (N, 18), class = mask*6 + gender*3 + age

Adding a backbone is one decorated function (any timm name also works without registering it):

    @register_model("ConvNeXtT")
    def convnext_t(**kw): return timm_backbone("convnext_tiny", **kw)

timm and torch are imported when a model is built, not with this file: listing the registered names
(``train.py --help``) stays instant. The multi head's nn.Module is in modules.py.

Weights: ``pretrained=True`` loads timm's hub weights (from the local cache when they are there, with no
network access); when they cannot be downloaded, a one-line ``UserError`` names ``--no-pretrained`` and
``--weights PATH``. ``weights=PATH`` loads a local backbone file (a timm state_dict saved as ``.pth`` or
``.safetensors``) through timm's own pretrained-loading path, so classifier removal and input-conv
adaptation behave exactly as for hub weights.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from maskcls.data import HEAD_SIZES, NUM_CLASSES  # the label layout: class = mask*6 + gender*3 + age
from maskcls.registry import Registry, UnknownNameError
from maskcls.utils import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn

MODELS = Registry("model")
register_model = MODELS.register

HEADS = ("single", "multi")
TIMM_PREFIX = "timm:"
# Seconds to wait for the weights host before declaring it unreachable. huggingface_hub itself retries a
# failed connection 5 times with back-off (about 25 s per file, two files: ~50 s) before giving up.
PROBE_TIMEOUT_S = 5.0
_FIX = "train from scratch with --no-pretrained, or pass a local backbone file with --weights PATH (.pth/.safetensors)"


# --------------------------------------------------------------------------- registered backbones
# The backbones of the competition retrospective. Each alias is case-insensitive.
@register_model("ResNet18")
def resnet18(**kw):
    return timm_backbone("resnet18", **kw)


@register_model("ResNet50")
def resnet50(**kw):
    return timm_backbone("resnet50", **kw)


@register_model("ResNet101")
def resnet101(**kw):
    return timm_backbone("resnet101", **kw)


@register_model("EffB0")
def effb0(**kw):
    return timm_backbone("efficientnet_b0", **kw)


@register_model("EffB1")
def effb1(**kw):
    return timm_backbone("efficientnet_b1", **kw)


@register_model("EffB2")
def effb2(**kw):
    return timm_backbone("efficientnet_b2", **kw)


@register_model("EffB3")
def effb3(**kw):
    return timm_backbone("efficientnet_b3", **kw)


@register_model("EffB4")
def effb4(**kw):
    return timm_backbone("efficientnet_b4", **kw)


@register_model("EffB1P")
def effb1p(**kw):
    return timm_backbone("efficientnet_b1_pruned", **kw)


@register_model("EffB2P")
def effb2p(**kw):
    return timm_backbone("efficientnet_b2_pruned", **kw)


@register_model("EffB3P")
def effb3p(**kw):
    return timm_backbone("efficientnet_b3_pruned", **kw)


@register_model("SEResNeXt26d")
def seresnext26d(**kw):
    return timm_backbone("seresnext26d_32x4d", **kw)


@register_model("SEResNeXt26t")
def seresnext26t(**kw):
    return timm_backbone("seresnext26t_32x4d", **kw)


@register_model("SEResNeXt50")
def seresnext50(**kw):
    return timm_backbone("seresnext50_32x4d", **kw)


@register_model("NFNetL0")
def nfnet_l0(**kw):
    return timm_backbone("nfnet_l0", **kw)


# --------------------------------------------------------------------------- names
def resolve_model_name(name: str) -> str:
    """The canonical name stored in checkpoints: a registered alias ("ResNet18") or "timm:<timm name>".

    Accepts registered aliases (case-insensitive), "timm:<name>" and plain timm names (optionally with a
    pretrained tag, e.g. "resnet18.a1_in1k"); anything else raises ``registry.UnknownNameError``.
    """
    if name in MODELS:
        return MODELS.canonical(name)
    import timm

    timm_name = name[len(TIMM_PREFIX) :] if name.lower().startswith(TIMM_PREFIX) else name
    for candidate in dict.fromkeys((timm_name, timm_name.lower())):
        if candidate and timm.is_model(candidate):
            _check_pretrained_tag(candidate)
            return TIMM_PREFIX + candidate
    raise UnknownNameError(
        f"unknown model {name!r}; registered models: {', '.join(MODELS.names())}; "
        f"any timm model name also works, plain or as timm:<name> (e.g. timm:convnext_tiny; see timm.list_models())"
    )


def _check_pretrained_tag(timm_name: str) -> None:
    import timm

    try:
        timm.models.get_pretrained_cfg(timm_name)
    except RuntimeError:  # timm's answer to "resnet18.no_such_tag"
        arch = timm_name.split(".", 1)[0]
        tags = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{arch}.*")]
        raise UnknownNameError(
            f"unknown pretrained tag in model {timm_name!r}; tags of {arch}: {', '.join(tags) or 'none'}"
        ) from None


# --------------------------------------------------------------------------- building
def create_model(
    name: str,
    head: str = "single",
    pretrained: bool = True,
    weights: str | os.PathLike | None = None,
    drop_rate: float | None = None,
    **kw,
) -> nn.Module:
    """Build a backbone with an 18-class ("single") or mask/gender/age ("multi") head.

    The forward pass returns a logits tensor: (N, 18) for "single", (N, 8) = [mask 3 | gender 2 | age 3]
    for "multi" (one tensor keeps DDP, AMP, torch.compile and EMA simple). ``weights`` (a local backbone
    file) takes precedence over ``pretrained``. ``drop_rate`` is timm's pre-classifier dropout for
    "single" and each head's dropout for "multi". Further keyword arguments go to ``timm.create_model``;
    None values are dropped, as timm does. Sets ``model.head_type`` and ``model.model_name``.
    """
    if head not in HEADS:
        raise UserError(f"unknown head {head!r}; use one of: {', '.join(HEADS)}")
    display = resolve_model_name(name)
    build: Callable[..., nn.Module] = (
        partial(timm_backbone, display[len(TIMM_PREFIX) :]) if display.startswith(TIMM_PREFIX) else MODELS.get(display)
    )
    kw = {k: v for k, v in kw.items() if v is not None}
    if head == "single":
        if drop_rate is not None:
            kw["drop_rate"] = drop_rate
        model = build(num_classes=NUM_CLASSES, pretrained=pretrained, weights=weights, **kw)
    else:
        # num_classes=0 makes the timm model return pooled features; the dropout lives in our heads.
        from maskcls.modules import MultiHeadNet

        backbone = build(num_classes=0, pretrained=pretrained, weights=weights, **kw)
        model = MultiHeadNet(backbone, drop_rate=drop_rate or 0.0)
    model.head_type = head
    model.model_name = display
    return model


def split_multi_logits(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, 8) multi-head logits -> (mask (N,3), gender (N,2), age (N,3))."""
    if logits.ndim != 2 or logits.shape[1] != sum(HEAD_SIZES):
        raise ValueError(f"multi-head logits must have shape (N, {sum(HEAD_SIZES)}), got {tuple(logits.shape)}")
    import torch

    mask, gender, age = torch.split(logits, HEAD_SIZES, dim=1)
    return mask, gender, age


def logits_to_probs(logits: torch.Tensor, head: str) -> torch.Tensor:
    """(N, 18) float32 class probabilities; for "multi" the product of the three heads' softmaxes.

    Class order is mask*6 + gender*3 + age, i.e. a C-order reshape of the (mask, gender, age) grid.
    """
    logits = logits.float()
    if head == "single":
        return logits.softmax(dim=1)
    if head == "multi":
        import torch

        mask, gender, age = (part.softmax(dim=1) for part in split_multi_logits(logits))
        return torch.einsum("nm,ng,na->nmga", mask, gender, age).reshape(len(logits), NUM_CLASSES)
    raise ValueError(f"unknown head {head!r}; use one of: {', '.join(HEADS)}")


# --------------------------------------------------------------------------- timm + weights
def timm_backbone(
    timm_name: str, pretrained: bool = True, weights: str | os.PathLike | None = None, **kwargs
) -> nn.Module:
    """``timm.create_model`` whose weight problems are one-line ``UserError``s (see the module docstring)."""
    import timm

    if weights is not None:
        return _with_local_weights(timm_name, Path(weights), kwargs)
    if not pretrained:
        return timm.create_model(timm_name, pretrained=False, **kwargs)
    return _with_hub_weights(timm_name, kwargs)


def _with_local_weights(timm_name: str, path: Path, kwargs: dict) -> nn.Module:
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


def _with_hub_weights(timm_name: str, kwargs: dict) -> nn.Module:
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
