"""Bad and awkward inputs through the real command line: each ends with exit 2, one ``promptseg: error:`` line,
no traceback, nothing written and nothing deleted; valid awkward inputs give the right result.

Cases run in-process (``PromptSegLib.cli.main``) except the signals, which need a process of their own.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from PromptSegLib.cli import main
from PromptSegLib.model_io import CONFIG, replace_file

from conftest import zip_model


def tree(root: Path) -> dict[str, int]:
    """Every file and folder under ``root`` (relative path -> size, -1 for folders)."""
    return {str(p.relative_to(root)): (-1 if p.is_dir() else p.stat().st_size) for p in sorted(root.rglob("*"))}


def fails_cleanly(argv: list[str], capsys, reason: str) -> str:
    """Run the CLI in-process; assert exit 2 and a single ``promptseg: error:`` line holding ``reason``."""
    code = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("promptseg: error: ") and "Traceback" not in captured.err, lines
    assert reason in lines[0], lines[0]
    return lines[0]


# --- a model's name is a name -------------------------------------------------------------------------------------

def renamed_model(tiny_model_folder: Path, where: Path, name: str) -> Path:
    """A copy of the tiny model whose ``config.json`` (and checksum manifest) says ``name``."""
    folder = shutil.copytree(tiny_model_folder, where)
    config = json.loads((folder / CONFIG).read_text())
    replace_file(folder, CONFIG, json.dumps({**config, "name": name}, indent=2) + "\n")
    return folder


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    """``$PROMPTSEG_HOME`` in a fresh folder, with a victim folder beside it and an unrelated folder in the cache."""
    home = tmp_path / "home"
    (home / "models" / "mine").mkdir(parents=True)
    (home / "models" / "mine" / "notes.txt").write_text("not a model")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "precious.txt").write_text("keep me")
    monkeypatch.setenv("PROMPTSEG_HOME", str(home))
    return home


@pytest.mark.parametrize("name", ["../../x", "../x", "..", "a/b", "/tmp/x", "x\\y", ".hidden", "", "a b", "x..y",
                                  "mine/../../../x"])
@pytest.mark.parametrize("packed", [False, True])
def test_import_refuses_a_model_whose_name_is_a_path(tiny_model_folder, tmp_path, home, capsys, name, packed):
    source = renamed_model(tiny_model_folder, tmp_path / "src" / "evil", name)
    if packed:
        source = zip_model(source, tmp_path / "evil.zip")
    before = tree(tmp_path)
    fails_cleanly(["models", "--import", str(source)], capsys, "is not a plain name")
    assert tree(tmp_path) == before  # nothing written or deleted anywhere, in the cache or outside it


def test_import_never_replaces_a_folder_that_is_not_the_same_model(tiny_model_folder, tmp_path, home, capsys):
    source = renamed_model(tiny_model_folder, tmp_path / "src" / "mine", "mine")
    before = tree(tmp_path)
    fails_cleanly(["models", "--import", str(source)], capsys, "is not an installed copy of model 'mine'")
    assert tree(tmp_path) == before
    (home / "models" / "link").symlink_to(tmp_path / "x")
    source = renamed_model(tiny_model_folder, tmp_path / "src" / "link", "link")
    before = tree(tmp_path)
    fails_cleanly(["models", "--import", str(source)], capsys, "is not an installed copy of model 'link'")
    assert tree(tmp_path) == before and (tmp_path / "x" / "precious.txt").read_text() == "keep me"


def test_import_replaces_an_older_copy_of_the_same_model_and_nothing_else(tiny_model_folder, tmp_path, home, capsys):
    assert main(["models", "--import", str(tiny_model_folder)]) == 0
    installed = home / "models" / "tiny-untrained"
    (installed / "README.md").write_text("an older card")  # the older copy differs
    assert main(["models", "--import", str(zip_model(tiny_model_folder, tmp_path / "tiny.zip"))]) == 0
    assert (installed / "README.md").read_text() == (tiny_model_folder / "README.md").read_text()
    assert sorted(p.name for p in (home / "models").iterdir()) == ["mine", "tiny-untrained"]  # no leftovers
    assert (home / "models" / "mine" / "notes.txt").read_text() == "not a model"
    assert "installed" in capsys.readouterr().out


def test_download_refuses_a_catalogue_name_that_is_a_path(tiny_model_folder, tmp_path, home, capsys):
    from PromptSegLib.catalogue import catalogue_entry

    source = renamed_model(tiny_model_folder, tmp_path / "src" / "evil", "../x")
    archive = zip_model(source, tmp_path / "evil.zip")
    (home / "catalogue.json").write_text(json.dumps([{**catalogue_entry(tiny_model_folder, url=archive.as_uri()),
                                                      "name": "../x"}]))
    before = tree(tmp_path)
    fails_cleanly(["models", "--download", "../x"], capsys, "is not a plain name")
    assert tree(tmp_path) == before
