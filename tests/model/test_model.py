import pytest
import torch

from fedma.model import build_projector, fingerprint_weights, load_alignment_model
from fedma.model.fingerprint import FingerprintMismatch
from fedma.model.projector import load_projector_state
from fedma.spec import ModelSpec


def spec(tiny, **vision):
    return ModelSpec.model_validate({
        "vision": {"kind": "hf", "path": str(tiny["vision"]), "imageSize": 32, **vision},
        "languageModel": {"path": str(tiny["lm"]), "fingerprint": tiny["lm_fp"]},
    })


@pytest.fixture(scope="module")
def model(tiny_models):
    return load_alignment_model(spec(tiny_models, fingerprint=tiny_models["vision_fp"]))


def test_backbones_frozen_and_in_eval_mode(model):
    model.train()
    assert not model.vision.training and not model.lm.training and model.projector.training
    assert all(not p.requires_grad for p in model.vision.parameters())
    assert all(not p.requires_grad for p in model.lm.parameters())
    assert all(p.requires_grad for p in model.projector.parameters())
    model.eval()


def test_clip_features_drop_class_token_and_use_chosen_layer(model):
    px = torch.randn(2, 3, 32, 32)
    feats = model.image_features(px)
    assert feats.shape == (2, 16, 32)  # (32/8)^2 patches, no CLS
    assert not feats.requires_grad
    last = model.vision_adapter.module(pixel_values=px, output_hidden_states=True).hidden_states
    assert torch.allclose(feats, last[-2][:, 1:])


@pytest.mark.parametrize("kind,n", [("linear", 2), ("mlp2x_gelu", 4)])
def test_projectors(kind, n):
    p = build_projector(kind, 32, 48, seed=1)
    assert len(p.state_dict()) == n
    assert p(torch.randn(2, 5, 32)).shape == (2, 5, 48)
    assert all(torch.equal(a, b) for a, b in zip(p.state_dict().values(),
                                                 build_projector(kind, 32, 48, 1).state_dict()
                                                 .values(), strict=True))


def test_only_projector_receives_gradients_and_loss_ignores_padding(model):
    feats = model.image_features(torch.randn(2, 3, 32, 32))
    loss, n = model.loss(feats, ["a red square : the number one", "a blue circle"])
    assert n == 7 + 3
    loss.backward()
    assert all(p.grad is not None for p in model.projector.parameters())
    assert all(p.grad is None for p in model.lm.parameters())
    model.projector.zero_grad()
    # Loss over caption tokens only: equals the mean of per-token NLL from token_logprobs.
    batch = model.tokenize(["a red square : the number one", "a blue circle"])
    lp = model.token_logprobs(feats, batch)
    assert torch.allclose(loss, -lp.sum() / batch.attention_mask.sum(), atol=1e-5)


def test_choice_scores_shortcut_matches_full_scoring(model):
    feats = model.image_features(torch.randn(3, 3, 32, 32))
    choices = [[f"a red square : the number {w}" for w in ("one", "two", "three")]] * 3
    fast = model.choice_scores(feats, choices)
    full = model.token_logprobs(feats.repeat_interleave(3, 0),
                                model.tokenize([c for cs in choices for c in cs])).sum(1)
    # The shortcut drops the shared prefix, which shifts every candidate equally.
    diff = full.view(3, 3) - fast
    assert torch.allclose(diff, diff[:, :1].expand_as(diff), atol=1e-4)
    assert torch.equal(fast.argmax(1), full.view(3, 3).argmax(1))


def test_fingerprint_detects_any_weight_change_and_ignores_sharding(tiny_models, tmp_path):
    from safetensors.torch import load_file, save_file

    assert fingerprint_weights(tiny_models["lm"]) == tiny_models["lm_fp"]
    state = load_file(str(tiny_models["lm"] / "model.safetensors"))
    names = sorted(state)
    # The same tensors cut into two files (a re-sharded checkpoint): the same fingerprint.
    resharded = tmp_path / "resharded"
    resharded.mkdir()
    for i, part in enumerate((names[::2], names[1::2])):
        save_file({k: state[k] for k in part},
                  str(resharded / f"model-0000{i + 1}-of-00002.safetensors"))
    assert fingerprint_weights(resharded) == tiny_models["lm_fp"]
    # One element changed by 1e-3, or one tensor stored in another dtype: another fingerprint.
    changed = tmp_path / "changed"
    changed.mkdir()
    bumped = dict(state)
    bumped[names[0]] = state[names[0]].clone()
    bumped[names[0]].view(-1)[0] += 1e-3
    save_file(bumped, str(changed / "model.safetensors"))
    assert fingerprint_weights(changed) != tiny_models["lm_fp"]
    save_file({**state, names[0]: state[names[0]].bfloat16()}, str(changed / "model.safetensors"))
    assert fingerprint_weights(changed) != tiny_models["lm_fp"]
    with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors"):
        fingerprint_weights(tmp_path)


@pytest.mark.faults
def test_fingerprint_mismatch_refuses_to_load(tiny_models):
    with pytest.raises(FingerprintMismatch, match=r"model\.vision\.fingerprint: .* refusing"):
        load_alignment_model(spec(tiny_models, fingerprint="0" * 64))


def test_projector_state_checks(model):
    good = {k: v.clone() for k, v in model.projector.state_dict().items()}
    bad = dict(good)
    k = next(iter(bad))
    bad[k] = torch.full_like(bad[k], float("nan"))
    with pytest.raises(ValueError, match="non-finite"):
        load_projector_state(model.projector, bad, "upd")
    bad[k] = torch.zeros(1)
    with pytest.raises(ValueError, match="has shape"):
        load_projector_state(model.projector, bad, "upd")
    load_projector_state(model.projector, good, "upd")


def test_siglip_tower_keeps_every_patch_token(tmp_path):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    from fedma.model.vision import load_vision

    SiglipVisionModel(SiglipVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        image_size=32, patch_size=8)).save_pretrained(tmp_path / "siglip")
    tower = load_vision("hf", str(tmp_path / "siglip"), layer=-1, image_size=32)
    assert not tower.drop_cls and tower.feature_dim == 16
    with torch.no_grad():
        assert tower.features(torch.randn(1, 3, 32, 32)).shape == (1, 16, 16)


def test_missing_backbone_folder_is_named(tmp_path):
    from fedma.model.vision import load_vision

    with pytest.raises(FileNotFoundError, match=r"vision tower folder .*nope does not exist"):
        load_vision("hf", str(tmp_path / "nope"), -2, 224)
    # Fingerprinting reads the files first, and names the folder the same way.
    with pytest.raises(FileNotFoundError, match=r"backbone folder .*nope does not exist"):
        fingerprint_weights(tmp_path / "nope")

def test_score_one_pass_matches_loss_and_choice_scores(model):
    feats = model.image_features(torch.randn(3, 3, 32, 32))
    words = ("one", "two", "three")
    choices = [[f"a red square : the number {w}" for w in words]] * 3
    captions = [choices[i][i] for i in range(3)]
    nll, n, scores = model.score(feats, captions, choices)
    loss, n_ref = model.loss(feats, captions)
    assert n == n_ref
    assert torch.allclose(nll / n, loss, atol=1e-5)
    assert torch.allclose(scores, model.choice_scores(feats, choices), atol=1e-4)
    # Candidates that differ in more than the last token take the separate pass; same answer.
    mixed = [["a red square", "a blue circle : the number one"]] * 3
    nll2, _, scores2 = model.score(feats, [m[0] for m in mixed], mixed)
    assert torch.allclose(scores2, model.choice_scores(feats, mixed))
    assert torch.allclose(nll2 / 3 / 3, model.loss(feats, ["a red square"] * 3)[0], atol=1e-5)


def test_caption_nll_per_sample_matches_loss(model):
    feats = model.image_features(torch.randn(2, 3, 32, 32))
    caps = ["a red square : the number one", "a blue circle"]
    batch = model.tokenize(caps)
    nll = model.caption_nll(model.projector(feats), batch)
    assert nll.shape == batch.input_ids.shape and float(nll.detach()[1, 3:].abs().sum()) == 0.0
    assert torch.allclose(nll.sum() / batch.attention_mask.sum(), model.loss(feats, caps)[0],
                          atol=1e-5)


def test_fedma_fingerprint_prints_what_the_spec_checks(tiny_models, tmp_path):
    from typer.testing import CliRunner

    from fedma.cli import app

    out = CliRunner().invoke(app, ["fingerprint", str(tiny_models["lm"])])
    assert out.exit_code == 0 and out.stdout.strip() == tiny_models["lm_fp"]
    out = CliRunner().invoke(app, ["fingerprint", str(tmp_path)])
    assert out.exit_code == 2 and "no *.safetensors weights" in out.output
