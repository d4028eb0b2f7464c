"""maskcls/models.py and maskcls/hub.py: registered backbones, heads, name resolution, probabilities and weight
loading (all offline)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import timm
import torch

from maskcls import hub as H
from maskcls import models as M
from maskcls import modules
from maskcls.registry import UnknownNameError
from maskcls.utils import UserError

# The competition retrospective's backbones: alias -> timm architecture.
ALIASES = {
    "ResNet18": "resnet18",
    "ResNet50": "resnet50",
    "ResNet101": "resnet101",
    "EffB0": "efficientnet_b0",
    "EffB1": "efficientnet_b1",
    "EffB2": "efficientnet_b2",
    "EffB3": "efficientnet_b3",
    "EffB4": "efficientnet_b4",
    "EffB1P": "efficientnet_b1_pruned",
    "EffB2P": "efficientnet_b2_pruned",
    "EffB3P": "efficientnet_b3_pruned",
    "SEResNeXt26d": "seresnext26d_32x4d",
    "SEResNeXt26t": "seresnext26t_32x4d",
    "SEResNeXt50": "seresnext50_32x4d",
    "NFNetL0": "nfnet_l0",
}
SMALL_TIMM = "mobilenetv3_small_050"  # tiny, and its pooled width differs from num_features
# Stands in for httpx's ConnectError, which (unlike huggingface_hub's errors) is no OSError.
HttpxConnectError = type("ConnectError", (Exception,), {"__module__": "httpx"})


@pytest.fixture(autouse=True)
def _few_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the test machine's cores are shared
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test if anything tries to reach a weights host or the weights cache."""

    def forbidden(*args, **kwargs):
        raise AssertionError("network or cache looked up")

    monkeypatch.setattr(H, "probe_host", forbidden)
    monkeypatch.setattr(H, "_cached_weights", forbidden)


def forward(model: torch.nn.Module, size: int = 32) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(torch.randn(2, 3, size, size))


# --------------------------------------------------------------------------- registry and names
def test_registered_aliases_are_the_retrospective_backbones():
    assert M.MODELS.names() == list(ALIASES)


@pytest.mark.parametrize(
    "alias", [pytest.param(a, marks=pytest.mark.slow) if a in ("ResNet101", "EffB3P") else a for a in ALIASES]
)  # the two over 1.5 s
def test_every_alias_builds_and_runs(alias, no_network):
    model = M.create_model(alias, pretrained=False)
    assert model.pretrained_cfg["architecture"] == ALIASES[alias]
    assert model.head_type == "single" and model.model_name == alias
    out = forward(model)
    assert out.shape == (2, M.NUM_CLASSES) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["ResNet18", "EffB0", f"timm:{SMALL_TIMM}"])
def test_multi_head_outputs_eight_logits(name):
    model = M.create_model(name, head="multi", pretrained=False, drop_rate=0.25)
    assert isinstance(model, modules.MultiHeadNet) and model.head_type == "multi"
    assert [h[1].out_features for h in model.heads.values()] == [3, 2, 3]
    assert all(h[0].p == 0.25 for h in model.heads.values())
    out = forward(model)
    assert out.shape == (2, 8)
    mask, gender, age = M.split_multi_logits(out)
    assert mask.shape == (2, 3) and gender.shape == (2, 2) and age.shape == (2, 3)
    assert torch.equal(torch.cat([mask, gender, age], dim=1), out)
    assert model.pretrained_cfg["mean"]  # data config of the backbone stays reachable


def test_single_head_drop_rate_and_extra_kwargs_reach_timm():
    model = M.create_model("ResNet18", pretrained=False, drop_rate=0.3, drop_path_rate=None, in_chans=1)
    assert model.drop_rate == 0.3
    assert model.conv1.in_channels == 1
    assert M.create_model("ResNet18", pretrained=False, drop_rate=None).drop_rate == 0.0


def test_timm_names_plain_and_prefixed():
    for name in (f"timm:{SMALL_TIMM}", SMALL_TIMM, f"TIMM:{SMALL_TIMM.upper()}"):
        assert M.resolve_model_name(name) == f"timm:{SMALL_TIMM}"
        model = M.create_model(name, pretrained=False)
        assert model.model_name == f"timm:{SMALL_TIMM}"
        assert forward(model).shape == (2, 18)
    assert M.resolve_model_name("timm:resnet18.a1_in1k") == "timm:resnet18.a1_in1k"


def test_registered_names_are_case_insensitive_and_win_over_timm():
    assert M.resolve_model_name("effb3p") == "EffB3P"
    assert M.resolve_model_name("SERESNEXT26D") == "SEResNeXt26d"
    assert M.resolve_model_name("resnet18") == "ResNet18"  # same timm model either way
    assert M.create_model("nfnetl0", pretrained=False).model_name == "NFNetL0"


@pytest.mark.parametrize("name", ["ResNet19", "timm:not_a_model", "timm:"])
def test_unknown_model_lists_valid_names(name):
    with pytest.raises(UnknownNameError) as err:
        M.create_model(name, pretrained=False)
    message = str(err.value)
    assert all(alias in message for alias in ALIASES)
    assert "timm" in message and "\n" not in message


def test_unknown_pretrained_tag_lists_tags():
    with pytest.raises(UnknownNameError, match="a1_in1k"):
        M.resolve_model_name("resnet18.no_such_tag")


def test_unknown_head():
    with pytest.raises(UserError, match="single, multi"):
        M.create_model("ResNet18", head="double", pretrained=False)


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        M.register_model("resnet18")(lambda **kw: None)
    with pytest.raises(ValueError, match="already registered"):
        M.register_model("NewNet", "EFFB0")(lambda **kw: None)
    assert "NewNet" not in M.MODELS


# --------------------------------------------------------------------------- probabilities
def test_logits_to_probs_single_is_softmax():
    logits = torch.randn(4, 18)
    probs = M.logits_to_probs(logits, "single")
    assert torch.allclose(probs, logits.softmax(1))
    assert torch.allclose(probs.sum(1), torch.ones(4))


def test_logits_to_probs_multi_matches_hand_loop():
    logits = torch.randn(5, 8, dtype=torch.float64)
    probs = M.logits_to_probs(logits, "multi")
    assert probs.shape == (5, 18) and probs.dtype == torch.float32
    assert torch.allclose(probs.sum(1), torch.ones(5))
    pm, pg, pa = logits[:, :3].softmax(1), logits[:, 3:5].softmax(1), logits[:, 5:].softmax(1)
    for n in range(5):
        for mask in range(3):
            for gender in range(2):
                for age in range(3):
                    expected = pm[n, mask] * pg[n, gender] * pa[n, age]
                    assert probs[n, mask * 6 + gender * 3 + age].item() == pytest.approx(expected.item(), rel=1e-5)


def test_class_order_agrees_with_dataset():
    from maskcls import age, labels

    assert tuple(labels.HEAD_SIZES) == age.head_sizes("groups")
    assert labels.encode_label(2, 1, 0) == 2 * 6 + 1 * 3 + 0


def test_bad_logits_shapes():
    with pytest.raises(ValueError):
        M.split_multi_logits(torch.zeros(2, 18))
    with pytest.raises(ValueError):
        M.logits_to_probs(torch.zeros(2, 8), "double")


# --------------------------------------------------------------------------- hub weights (no network used)
def _assert_one_line_with_fixes(err: pytest.ExceptionInfo) -> None:
    message = str(err.value)
    assert "\n" not in message
    assert "--no-pretrained" in message and "--weights PATH" in message


def test_offline_pretrained_fails_fast_with_one_line(monkeypatch):
    monkeypatch.setattr(H, "_cached_weights", lambda *a: None)
    monkeypatch.setattr(H, "probe_host", lambda *a: "cannot reach huggingface.co:443: Name or service not known")
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.delenv("ALL_PROXY", raising=False)
    monkeypatch.delenv("all_proxy", raising=False)
    with pytest.raises(UserError, match="could not download pretrained weights") as err:
        M.create_model("ResNet18")  # pretrained=True is the default
    _assert_one_line_with_fixes(err)


@pytest.mark.parametrize(
    "error",
    [
        pytest.param("hub", id="LocalEntryNotFoundError"),
        pytest.param(
            type("ConnectError", (Exception,), {"__module__": "httpx"})("[Errno -2] Name unknown"), id="httpx"
        ),
        pytest.param(OSError("Network is unreachable"), id="OSError"),
    ],
)
def test_download_errors_from_timm_become_user_errors(monkeypatch, error):
    if error == "hub":
        from huggingface_hub.errors import LocalEntryNotFoundError

        error = LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub\nmore text")
    real_create = timm.create_model

    def create(name, pretrained=False, **kw):
        if pretrained:
            raise error
        return real_create(name, pretrained=False, **kw)

    monkeypatch.setattr(H, "_cached_weights", lambda *a: None)
    monkeypatch.setattr(H, "probe_host", lambda *a: None)  # the host answers, the download still fails
    monkeypatch.setattr(timm, "create_model", create)
    with pytest.raises(UserError) as err:
        M.create_model("EffB0", head="multi")
    _assert_one_line_with_fixes(err)


def test_other_errors_from_timm_are_not_hidden(monkeypatch):
    def create(*args, **kw):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(H, "_cached_weights", lambda *a: None)
    monkeypatch.setattr(H, "probe_host", lambda *a: None)
    monkeypatch.setattr(timm, "create_model", create)
    with pytest.raises(ZeroDivisionError):
        M.create_model("ResNet18")


def test_hf_hub_offline_env_needs_no_probe(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(H, "_cached_weights", lambda *a: None)
    monkeypatch.setattr(H, "probe_host", lambda *a: pytest.fail("probed although HF_HUB_OFFLINE is set"))
    with pytest.raises(UserError, match="HF_HUB_OFFLINE") as err:
        M.create_model("ResNet18")
    _assert_one_line_with_fixes(err)


def test_model_without_pretrained_weights(no_network):
    with pytest.raises(UserError, match="no pretrained weights") as err:
        M.create_model("timm:resnet200")  # an architecture timm has no weights for
    _assert_one_line_with_fixes(err)


def test_cached_hub_weights_load_without_network(monkeypatch, tmp_path):
    source = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "model.safetensors"
    from safetensors.torch import save_file

    save_file(source.state_dict(), path)
    monkeypatch.setattr(H, "_cached_weights", lambda *a: path)
    monkeypatch.setattr(H, "probe_host", lambda *a: pytest.fail("probed although the weights are cached"))
    model = M.create_model("ResNet18")
    assert torch.equal(model.conv1.weight, source.conv1.weight)


def test_probe_host_reports_refused_and_open_ports():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert H.probe_host("127.0.0.1", server.getsockname()[1], 2.0) is None
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound but not listening: connections are refused
        reason = H.probe_host("127.0.0.1", port, 2.0)
    assert reason and "cannot reach 127.0.0.1" in reason


# --------------------------------------------------------------------------- local weights files
def _save(state: dict, path: Path) -> Path:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, path)
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("head", ["single", "multi"])
def test_local_weights_file_loads_the_same_tensors(tmp_path, no_network, suffix, head):
    source = timm.create_model("resnet18", pretrained=False)
    state = source.state_dict()
    path = _save(state, tmp_path / f"resnet18{suffix}")
    model = M.create_model("ResNet18", head=head, weights=path)  # pretrained=True default: weights win
    loaded = (model.backbone if head == "multi" else model).state_dict()
    compared = [k for k in state if not k.startswith("fc.")]
    assert all(torch.equal(loaded[k], state[k]) for k in compared)
    assert len(compared) > 100
    out = forward(model)
    assert out.shape == (2, 18 if head == "single" else 8)


def test_missing_weights_file(tmp_path, no_network):
    with pytest.raises(UserError, match="not found"):
        M.create_model("ResNet18", weights=tmp_path / "nope.pth")


def test_unreadable_weights_file(tmp_path, no_network):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"not a tensor file")
    with pytest.raises(UserError, match="cannot read weights file"):
        M.create_model("ResNet18", weights=path)


def test_weights_of_another_architecture(tmp_path, no_network):
    path = _save(timm.create_model(SMALL_TIMM, pretrained=False).state_dict(), tmp_path / "other.pth")
    with pytest.raises(UserError, match="weights file"):
        M.create_model("ResNet18", weights=path)


def test_weights_file_without_backbone_tensors(tmp_path, no_network):
    path = _save({"something": torch.zeros(3)}, tmp_path / "foreign.pth")
    with pytest.raises(UserError, match="lacks"):
        M.create_model("ResNet18", weights=path)


def test_maskcls_checkpoint_is_not_a_weights_file(tmp_path, no_network):
    state = M.create_model("ResNet18", pretrained=False).state_dict()
    path = _save({"format": "maskcls-checkpoint", "version": 1, "model_state": state}, tmp_path / "best.pt")
    with pytest.raises(UserError, match="maskcls checkpoint"):
        M.create_model("ResNet18", weights=path)
