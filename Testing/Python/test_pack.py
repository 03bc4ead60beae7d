"""Training packs: the prepared training cases carried to a GPU machine, and training on them without
SimpleITK or the text encoder (real sarcoma CTs from shared/)."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from PromptSegLib.errors import OutputError, PromptSegError
from PromptSegLib.models.folder import load_model
from PromptSegLib.text.encoder import TextEncoder
from PromptSegLib.text.prompts import paraphrases
from PromptSegLib.text.vocabulary import default_vocabulary
from PromptSegLib.train.config import TrainConfig
from PromptSegLib.train.datasets import load_spec, load_split, prepare_case
from PromptSegLib.train.pack import POINTS, read_pack, write_pack
from PromptSegLib.train.pack_crops import PackSampler, crop, random_affine
from PromptSegLib.train.pack_training import train_on_pack
from PromptSegLib.train.training import intensity_rules

from conftest import REPO, needs_shared
from test_training import write_spec

pytestmark = needs_shared()


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = tmp_path_factory.mktemp("pack")
    spec = write_spec(root / "spec.json", [("STS_001", "train"), ("STS_002", "train"), ("STS_025", "val")])
    return spec, write_pack(spec, root / "pack", 6.0)


def test_a_pack_holds_the_training_cases_as_promptseg_train_prepares_them(packed):
    spec, folder = packed
    pack = read_pack(folder)
    loaded = load_split(load_spec(spec), "train")
    rules = intensity_rules(None, loaded)
    assert [c.id for c in pack.cases] == ["STS_001", "STS_002"]  # the training split only
    assert pack.intensity["CT"] == pytest.approx([rules["CT"].low, rules["CT"].high, rules["CT"].mean, rules["CT"].std])
    half_step = (rules["CT"].high - rules["CT"].low) / 255 / 2 / rules["CT"].std
    for case, stored in zip(loaded, pack.cases):
        prepared = prepare_case(case, 6.0, rules)
        box = prepared.input.body
        assert stored.image.shape == prepared.label[box].shape
        assert np.abs(stored.image - prepared.input.array[box]).max() <= half_step * 1.001
        assert np.array_equal(stored.label, prepared.label[box])
        points = stored.points["gross tumor volume"]
        assert 0 < len(points) <= POINTS and (stored.label[tuple(points.T)] == 1).all()
    dataset = pack.datasets["sts_tiny"]
    texts = json.loads((folder / "pack.json").read_text())["texts"]
    assert pack.prompts.shape == (len(texts), 384)
    vocabulary = default_vocabulary()
    assert [texts[row] for row in dataset.contexts] == paraphrases("CT", "extremity",
                                                                    vocabulary.region("extremity").synonyms)
    assert [texts[row] for row in dataset.prompts["gross tumor volume"]] == paraphrases(
        "CT", "gross tumor volume", vocabulary.target("gross tumor volume").synonyms)
    assert np.allclose(pack.prompts, TextEncoder().encode(texts).numpy(), atol=1e-5)
    assert sorted(p.name for p in folder.iterdir()) == ["arrays.npz", "pack.json"]


def test_a_pack_is_never_written_over_and_a_broken_one_is_refused(packed, tmp_path, monkeypatch):
    spec, folder = packed
    before = (folder / "arrays.npz").read_bytes()
    with pytest.raises(OutputError, match="not empty"):
        write_pack(spec, folder, 6.0)
    assert (folder / "arrays.npz").read_bytes() == before
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "arrays.npz").write_bytes(before[:len(before) // 2])  # truncated
    with pytest.raises(PromptSegError, match="not a complete training pack"):
        read_pack(broken)
    with pytest.raises(PromptSegError, match="not a complete training pack"):
        read_pack(tmp_path / "nowhere")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_pack(spec, tmp_path / "cancelled", 6.0)
    assert not (tmp_path / "cancelled").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["broken"]


def test_an_unrotated_crop_is_the_volume_block_and_a_quarter_turn_moves_the_right_voxels(packed):
    """Crop voxel j samples ``centre + A (j - patch // 2)``, edge voxels repeated beyond the volume: checked for
    the identity and for a quarter turn in the axial plane (exact sample positions), near and at the edges."""
    pack = read_pack(packed[1])
    case = pack.cases[0]
    volume, label = torch.from_numpy(case.image), torch.from_numpy(case.label)
    patch = (8, 10, 12)
    quarter = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], float)
    shape = np.array(case.label.shape)
    for centre in (case.points["gross tumor volume"][0], np.array([0, 1, 2]), shape - 1):
        for affine in (np.eye(3), quarter):
            image, values = crop(volume, label, centre, patch, affine)
            offsets = np.stack(np.meshgrid(*[np.arange(n) - n // 2 for n in patch], indexing="ij"), -1)
            source = np.clip(centre + offsets @ affine.T.astype(int), 0, shape - 1)
            index = tuple(np.moveaxis(source, -1, 0))
            assert np.allclose(image.numpy(), case.image[index], atol=1e-4)
            assert np.array_equal(values.numpy(), case.label[index])


def test_crops_centre_on_each_target_equally_often(packed):
    pack = read_pack(packed[1])
    sampler = PackSampler(pack.cases, ["gross tumor volume"], foreground_ratio=1.0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        index, centre, target = sampler.draw(rng)
        assert pack.cases[index].label[tuple(centre)] == 1 and target == "gross tumor volume"
    anywhere = PackSampler(pack.cases, ["gross tumor volume"], foreground_ratio=0.0)
    assert all(anywhere.draw(rng)[2] is None for _ in range(5))
    turns = [random_affine(rng, True) for _ in range(200)]
    identity = sum(np.allclose(a, np.eye(3)) for a in turns)
    assert 110 < identity < 170  # rotated and scaled with probability 0.3
    assert all(np.allclose(random_affine(rng, False), np.eye(3)) for _ in range(10))


def test_training_on_a_pack_writes_a_model_and_its_card(packed, tmp_path):
    spec, folder = packed
    config = TrainConfig(spec=str(folder), output=str(tmp_path / "model"), name="tiny", widths=(4, 8),
                         patch_size=(32, 32, 32), batch_size=2, steps=3, checkpoint_every=2, threads=1, device="cpu")
    train_on_pack(config, "promptseg train-pack PACK -o MODEL", "promptseg train-pack")
    model = load_model(config.output)
    assert model.config.targets == ["gross tumor volume"] and model.config.spacing_mm == 6.0
    assert model.config.intensity == read_pack(folder).intensity
    card = (tmp_path / "model" / "README.md").read_text()
    assert "trained by `promptseg train-pack`" in card and "case `STS_002`" in card and "STS_025" not in card
    rows = list(csv.DictReader(open(tmp_path / "model.work" / "log.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3] and all(np.isfinite(float(r["loss"])) for r in rows)


def train_where_simpleitk_is_missing(pack, model, *options: str) -> None:
    """The pack trainer's entry point, in a process where SimpleITK, transformers, MONAI and peft cannot be
    imported (a lent GPU machine has torch, numpy and safetensors): a tiny network, one thread, on the CPU."""
    argv = [str(pack), "-o", str(model), "--widths", "4", "8", "--patch-size", "16", "16", "16", "--threads", "1",
            "--device", "cpu", *options]
    code = ("import sys; sys.modules.update(dict.fromkeys(['SimpleITK', 'transformers', 'monai', 'peft'])); "
            f"from PromptSegLib.train.pack_training import main; sys.exit(main({argv!r}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_a_pack_trains_where_neither_simpleitk_monai_nor_the_text_encoder_can_be_imported(packed, tmp_path):
    """What a lent GPU machine has: torch, numpy, safetensors, no SimpleITK or MONAI; the entry point beside
    the API runs there."""
    train_where_simpleitk_is_missing(packed[1], tmp_path / "model", "--batch-size", "1", "--steps", "1")
    assert load_model(tmp_path / "model").config.targets == ["gross tumor volume"]


def test_with_hints_a_pack_trains_the_drawn_slice_input_where_simpleitk_cannot_be_imported(packed, tmp_path):
    """``--hints`` on a pack: the drawn-slice convolution (zero at first) learns, and the model and its card say
    so."""
    train_where_simpleitk_is_missing(packed[1], tmp_path / "model", "--batch-size", "2", "--steps", "4",
                                     "--foreground-ratio", "1", "--hints", "--seed", "3")
    model = load_model(tmp_path / "model")
    assert model.config.network.hints
    assert float(dict(model.network.named_parameters())["hint.weight"].abs().max()) > 0
    assert "--hints" in (tmp_path / "model" / "README.md").read_text()


def test_the_device_script_trains_its_three_candidates_side_by_side_where_simpleitk_cannot_be_imported(packed,
                                                                                                      tmp_path):
    """``scripts/device_train.sh run`` as on a lent GPU (rehearsed on the CPU, one step each): the bundled organ
    model, it widened, and it with the drawn-slice input, each a model folder in one tar among the files that come
    back; ``unpack`` puts them back as model folders."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\nsys.modules.update(dict.fromkeys(['SimpleITK', 'transformers', 'monai', 'peft']))\n")
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(blocker), "PY": sys.executable, "DEVICE": "cpu", "BATCH": "1",
           "PACK": str(packed[1]), "WORK": str(tmp_path / "work"), "OUT": str(out)}
    script = str(REPO / "scripts" / "device_train.sh")
    done = subprocess.run(["bash", script, "run", "0.01"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["hints.log", "hints.tar", "plain.log", "plain.tar", "wide.log",
                                                      "wide.tar"]
    done = subprocess.run(["bash", script, "unpack", str(out), str(tmp_path / "models")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    models = {name: load_model(tmp_path / "models" / name) for name in ("plain", "wide", "hints")}
    base = load_model(REPO / "PromptSegLib" / "models" / "promptseg-hn-oars")
    assert models["plain"].config.network.widths == base.config.network.widths
    assert models["wide"].config.network.widths == (16, 48, 96, 192)
    assert models["wide"].config.patch_size == (64, 64, 64)
    assert [m.config.network.hints for m in models.values()] == [False, False, True]
    for model in models.values():
        assert set(base.config.targets) < set(model.config.targets)  # the pack's target joined the organs
    wide_card = (tmp_path / "models" / "wide" / "README.md").read_text()
    assert "python3 -m PromptSegLib.models.widen PromptSegLib/models/promptseg-hn-oars -o " in wide_card  # as run
    assert "--widths 16 48 96 192" in wide_card


def test_device_crops_are_augmented_as_cpu_crops_are(packed):
    """One augmentation code for NumPy (``promptseg train``) and torch (packs): same draws, same voxels."""
    from PromptSegLib.train.augmentation import jitter_intensity, limit_field_of_view

    case = read_pack(packed[1]).cases[0]
    image, label = case.image[:32, :20, :20], case.label[:32, :20, :20]
    for seed in range(8):
        on_cpu = limit_field_of_view(image, label, np.random.default_rng(seed))
        on_device = limit_field_of_view(torch.from_numpy(image), torch.from_numpy(label), np.random.default_rng(seed))
        assert np.array_equal(on_cpu[0], on_device[0].numpy()) and np.array_equal(on_cpu[1], on_device[1].numpy())
        assert np.allclose(jitter_intensity(image, np.random.default_rng(seed)),
                           jitter_intensity(torch.from_numpy(image), np.random.default_rng(seed)).numpy(), atol=1e-5)
