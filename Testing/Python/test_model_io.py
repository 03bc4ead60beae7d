"""Model folders: checksums checked on load, mismatches refused with a clear reason."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from PromptSegLib.errors import ModelError
from PromptSegLib.models.folder import SUMS, load_model, read_config, save_model, sha256

from conftest import zip_model


@pytest.fixture()
def folder(tiny_model_folder, tmp_path):
    return shutil.copytree(tiny_model_folder, tmp_path / "model")


def test_round_trip(folder):
    model = load_model(folder)
    assert model.config.name == "tiny-untrained"
    assert model.config.network.widths == (4, 8)
    assert model.config.patch_size == (32, 32, 32)
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", SUMS, "config.json", "weights.safetensors"]
    assert all(p.dtype == torch.float32 for p in model.network.parameters())


def test_saving_again_replaces_the_folder_whole(folder):
    model = load_model(folder)
    model.config.version = "2"
    save_model(folder, model.network, model.config, "# again\n")
    assert read_config(folder).version == "2"
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]


def test_altered_weights_fail_the_checksum(folder):
    with open(folder / "weights.safetensors", "r+b") as handle:
        handle.seek(200)
        handle.write(b"\x00\x01\x02")
    with pytest.raises(ModelError, match="weights.safetensors fails its sha256 check"):
        load_model(folder)


def test_unlisted_file_is_refused(folder):
    (folder / "extra.bin").write_bytes(b"?")
    with pytest.raises(ModelError, match="does not list: extra.bin"):
        load_model(folder)


def test_missing_manifest_and_folder(folder, tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "nothing")
    (folder / SUMS).unlink()
    with pytest.raises(ModelError, match="no SHA256SUMS"):
        load_model(folder)


def _rewrite_config(folder, change):
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))
    lines = [line for line in (folder / SUMS).read_text().splitlines() if not line.endswith("config.json")]
    (folder / SUMS).write_text("\n".join(lines + [f"{sha256(folder / 'config.json')}  config.json"]) + "\n")


def test_weights_of_another_architecture_are_refused(folder):
    _rewrite_config(folder, lambda c: c["network"].update(widths=[4, 8, 16]))
    with pytest.raises(ModelError, match="do not match the architecture"):
        load_model(folder)


def test_foreign_config_is_refused(folder):
    _rewrite_config(folder, lambda c: c.update(architecture="UNETR"))
    with pytest.raises(ModelError, match="not a PromptSeg DuPLUS"):
        load_model(folder)


def test_padding_defaults_to_constant_for_older_configs_and_is_checked(folder):
    _rewrite_config(folder, lambda c: c.pop("padding"))
    assert read_config(folder).padding == "constant"  # models saved before the field existed
    _rewrite_config(folder, lambda c: c.update(padding="mirror"))
    with pytest.raises(ModelError, match="padding 'mirror'"):
        load_model(folder)


def test_a_model_keeps_its_own_ct_window_whatever_the_code_default(folder, monkeypatch):
    """A model stores its CT window with the statistics; one that stores only ``[mean, std]`` (format 1, the
    bundled models) keeps the window it was trained with when the code's default for new models changes."""
    import PromptSegLib.preprocessing.intensity as intensity

    monkeypatch.setattr(intensity, "CT_WINDOW_HU", (-200.0, 300.0))
    _rewrite_config(folder, lambda c: c.update(intensity={"CT": [-1000.0, 800.0, -300.0, 400.0]}))
    rule = read_config(folder).intensity_rule("CT")
    assert (rule.low, rule.high, rule.mean, rule.std) == (-1000.0, 800.0, -300.0, 400.0)
    _rewrite_config(folder, lambda c: c.update(intensity={"CT": [-300.0, 400.0]}))
    rule = read_config(folder).intensity_rule("CT")
    assert (rule.low, rule.high, rule.mean, rule.std) == (-990.0, 500.0, -300.0, 400.0)
    assert read_config(folder).intensity_rule("MR") is None  # z-scored with each image's own statistics


def test_import_into_the_user_cache_and_use_by_name(folder, tmp_path, monkeypatch, capsys):

    from PromptSegLib.cli.main import main
    from PromptSegLib.models.catalogue import resolve_model

    monkeypatch.setenv("PROMPTSEG_HOME", str(tmp_path / "home"))
    archive = zip_model(folder, tmp_path / "tiny.zip")
    assert main(["models", "--import", str(archive)]) == 0
    installed = tmp_path / "home" / "models" / "tiny-untrained"
    assert "installed" in capsys.readouterr().out and (installed / "weights.safetensors").is_file()
    assert resolve_model("tiny-untrained") == installed
    assert load_model(resolve_model("tiny-untrained")).config.name == "tiny-untrained"
    with pytest.raises(ModelError, match="no model named 'nothing'"):
        resolve_model("nothing")
    with open(folder / "weights.safetensors", "r+b") as handle:
        handle.seek(300)
        handle.write(b"\x07")
    assert main(["models", "--import", str(folder)]) == 2  # a corrupted folder is refused, the cache kept
    assert "sha256" in capsys.readouterr().err
    load_model(installed)


@pytest.mark.parametrize("name, kind", [("promptseg-propagation", "propagation"),
                                        ("promptseg-prognosis-hecktor", "prognosis")])
def test_every_model_kind_imports_lists_and_stays_out_of_segmentation_routing(name, kind, tmp_path, monkeypatch,
                                                                              capsys):
    """Propagation and prognosis folders share the segmentation models' folder format: the same import (a .zip
    checked against its manifest), listing and catalogue entry, told apart by their kind; routing a
    segmentation request never picks them."""
    from PromptSegLib.cli.main import main
    from PromptSegLib.models.catalogue import catalogue_entry, installed_models, route_model
    from PromptSegLib.models.folder import BUNDLED_MODELS, folder_identity

    monkeypatch.setenv("PROMPTSEG_HOME", str(tmp_path / "home"))
    copy = shutil.copytree(BUNDLED_MODELS / name, tmp_path / "src" / "renamed-folder")
    assert main(["models", "--import", str(zip_model(copy, tmp_path / f"{kind}.zip"))]) == 0
    installed = installed_models()[name]  # named by its config, not by the folder it came in
    assert folder_identity(installed).kind == kind
    entry = catalogue_entry(installed)
    assert entry["kind"] == kind and entry["name"] == name and entry["folder"] is None
    capsys.readouterr()
    assert main(["models"]) == 0
    listed = [line for line in capsys.readouterr().out.splitlines() if line.startswith(name)]
    assert len(listed) == 2 and all(f"{kind} model" in line for line in listed)  # imported copy and bundled one
    assert route_model("CT", "head and neck", ["brain stem"]).name == "promptseg-hn-oars"
    (installed / "head.safetensors" if kind == "prognosis" else installed / "weights.safetensors").write_bytes(b"x")
    assert main(["models", "--import", str(installed)]) == 2  # altered: refused like any model
    assert "sha256" in capsys.readouterr().err


def test_a_folder_of_no_known_kind_is_refused(folder, tmp_path):
    from PromptSegLib.models.catalogue import import_model

    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "format": "something-else"}))
    with pytest.raises(ModelError, match="not a PromptSeg model folder"):
        import_model(folder, tmp_path / "cache")
    assert not (tmp_path / "cache" / "tiny-untrained").exists()


def test_download_a_site_catalogue_model_checked_against_its_sha256(folder, tmp_path, monkeypatch, capsys):

    from PromptSegLib.cli.main import main
    from PromptSegLib.models.catalogue import catalogue_entry, download_model, resolve_model

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("PROMPTSEG_HOME", str(home))
    (tmp_path / "served").mkdir()
    archive = zip_model(folder, tmp_path / "served" / "tiny.zip")
    entry = catalogue_entry(folder, url=archive.as_uri())  # a site's server, here a file: URL
    (home / "catalogue.json").write_text(json.dumps([entry]))

    assert main(["models"]) == 0
    assert "download with --download tiny-untrained" in capsys.readouterr().out
    with pytest.raises(ModelError, match="promptseg models --download NAME"):
        resolve_model("tiny-untrained")
    seen = []
    installed = download_model("tiny-untrained", progress=lambda done, total: seen.append((done, total)))
    assert installed == home / "models" / "tiny-untrained"
    assert load_model(installed).config.name == "tiny-untrained"
    assert seen[-1] == (archive.stat().st_size, archive.stat().st_size)
    assert main(["models"]) == 0 and "[imported, verified" in capsys.readouterr().out

    shutil.rmtree(installed)
    (home / "catalogue.json").write_text(json.dumps([{**entry, "sha256": "0" * 64}]))  # not the catalogued model
    with pytest.raises(ModelError, match="not the catalogued model"):
        download_model("tiny-untrained")
    (home / "catalogue.json").write_text(json.dumps([{**entry, "url": (tmp_path / "gone.zip").as_uri()}]))
    assert main(["models", "--download", "tiny-untrained"]) == 2  # offline or moved: says how to import instead
    assert "promptseg models --import ZIP" in capsys.readouterr().err

    def cancel(done, total):
        raise InterruptedError("cancelled")

    (home / "catalogue.json").write_text(json.dumps([entry]))
    with pytest.raises(InterruptedError):
        download_model("tiny-untrained", progress=cancel)
    assert sorted(p.name for p in (home / "models").iterdir()) == []  # nothing half-installed, no partial file
    with pytest.raises(ModelError, match="bundled"):
        download_model("promptseg-starter")


def test_an_unchanged_verified_folder_is_not_hashed_again_a_changed_one_is(folder, monkeypatch):
    import PromptSegLib.models.folder as model_io

    hashed = []
    real_sha256 = model_io.sha256
    monkeypatch.setattr(model_io, "sha256", lambda path: hashed.append(path.name) or real_sha256(path))
    model_io.verify_folder(folder)
    first = len(hashed)
    assert first == 3  # every file its manifest lists: weights, config, card
    read_config(folder)
    load_model(folder)
    assert len(hashed) == first  # a request's check, then its load: hashed once
    with open(folder / "weights.safetensors", "r+b") as handle:  # same size, new bytes
        handle.seek(300)
        handle.write(b"\x07")
    with pytest.raises(ModelError, match="sha256"):
        load_model(folder)
    with pytest.raises(ModelError, match="sha256"):  # a failure is never remembered as a pass
        model_io.verify_folder(folder)


def test_average_models_writes_the_weight_mean_untuned_with_both_cards(folder, tmp_path, capsys):
    import dataclasses

    from PromptSegLib.cli.main import main
    from PromptSegLib.models.average import average_models

    first = load_model(folder)
    tuned = dataclasses.replace(first.config, largest_component=list(first.config.targets[:1]))
    save_model(folder, first.network, tuned, "# first\n\n## Training\n\nstep lines\n")
    shifted = load_model(folder).network
    with torch.no_grad():
        for p in shifted.parameters():
            p.add_(0.5)
    save_model(tmp_path / "second", shifted, dataclasses.replace(tuned, version="0.2"), "# second\n")
    assert main(["average-models", str(folder), str(tmp_path / "second"), "-o", str(tmp_path / "mean"),
                 "--version", "1.0"]) == 0
    mean = load_model(tmp_path / "mean")
    for a, b in zip(first.network.parameters(), mean.network.parameters()):
        torch.testing.assert_close(b, a + 0.25, atol=2e-3, rtol=1e-3)  # stored as float16
    assert mean.config.version == "1.0" and mean.config.largest_component == []  # to be tuned again
    card = (tmp_path / "mean" / "README.md").read_text()
    assert "promptseg average-models" in card and "### Training" in card and "# second" in card
    # another target list: refused, nothing written
    other = dataclasses.replace(tuned, targets=["liver"])
    save_model(tmp_path / "other", first.network, other, "# other\n")
    with pytest.raises(ModelError, match="targets differ"):
        average_models([folder, tmp_path / "other"], tmp_path / "bad", "1.0")
    assert not (tmp_path / "bad").exists()
    assert main(["average-models", str(folder), "-o", str(tmp_path / "bad"), "--version", "1"]) == 2
    assert "two or more" in capsys.readouterr().err and not (tmp_path / "bad").exists()
