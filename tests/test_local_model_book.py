"""`make book MODEL=<a local folder>`, end to end on a tiny model saved to a temporary folder.

The profile is derived as ``--model`` derives it (its run directory inside the repository, as
``make book`` puts it), preflighted, and every chapter runs; then every output of every chapter is
searched for what the browser check (:mod:`funcprune.book.bookcheck`) refuses on a page: an absolute path
of this machine, such as the local model folder. Then the site is built from those chapters as
``make book`` builds it (strict Jupyter Book build, the HTML check, the content check and the browser
check), so a reader's own model cannot fail where the default passes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers as tf

from funcprune.book.bookcheck import GENERIC_PATH, find_chromium, machine_paths
from funcprune.model_assets import ensure_model
from funcprune.run.preflight import check_profile, derive_profile
from funcprune.run.profiles import load_profile
from funcprune.provenance import REPO_ROOT
from funcprune.book.workflow import find_errors, run_notebooks


def _tiny_local_model(folder: Path) -> Path:
    """An 8-layer llama with the default model's tokenizer, saved as a reader's checkpoint folder."""
    tokenizer = tf.AutoTokenizer.from_pretrained(ensure_model(progress=False))
    config = tf.LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=8,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            tie_word_embeddings=True)
    torch.manual_seed(0)
    tf.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _outputs(notebook: Path) -> str:
    """Everything a reader sees of an executed notebook: its outputs' text and HTML (the book removes stderr
    streams, ``nb_output_stderr: remove`` in book/_config.yml, so they are not shown and not checked)."""
    shown = []
    for cell in json.loads(notebook.read_text())["cells"]:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                continue
            shown.append(output.get("text", "") if isinstance(output.get("text", ""), str) else
                         "".join(output["text"]))
            for kind in ("text/plain", "text/html", "text/markdown"):
                value = output.get("data", {}).get(kind, "")
                shown.append(value if isinstance(value, str) else "".join(value))
    return "\n".join(shown)


@pytest.mark.slow
def test_book_on_a_local_model_folder_runs_and_shows_no_machine_path(tmp_path: Path) -> None:
    folder = _tiny_local_model(tmp_path / f"reader-model-{os.getpid()}")
    profile, notes = derive_profile(load_profile("tiny"), str(folder))
    run_dir = Path(profile["run_dir"])
    assert run_dir.parent == REPO_ROOT / "runs" and not run_dir.exists()
    try:
        assert check_profile(profile).ok
        report = run_notebooks(profile, tmp_path / "executed", use_cache=False)
        chapters = sorted((REPO_ROOT / "notebooks").glob("[0-9]*.ipynb"))
        assert len(report) == len(chapters) and find_errors([tmp_path / "executed"]) == []
        forbidden = machine_paths(extra=[folder, tmp_path])
        for notebook in sorted((tmp_path / "executed").glob("*.ipynb")):
            text = _outputs(notebook)
            leaked = [p for p in forbidden if p in text] + GENERIC_PATH.findall(text)
            assert not leaked, f"{notebook.name} shows machine paths {leaked[:3]}"
        _build_and_check_site(tmp_path, tmp_path / "executed")
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _build_and_check_site(tmp_path: Path, executed: Path) -> None:
    """The site of ``make book`` from these executed chapters: strict build, HTML, content and browser checks."""
    book = tmp_path / "site" / "book"
    shutil.copytree(REPO_ROOT / "book", book, ignore=shutil.ignore_patterns("_build", "executed"))
    shutil.copytree(REPO_ROOT / "notebooks", tmp_path / "site" / "notebooks")  # the workshop notebooks' source
    shutil.copytree(executed, book / "executed", ignore=shutil.ignore_patterns("*.stage.json"))
    bin_dir = Path(sys.executable).parent
    html = book / "_build" / "html"
    steps = [[str(bin_dir / "jupyter-book"), "build", str(book), "--warningiserror", "--keep-going"],
             [sys.executable, "-m", "funcprune.book.workflow", "check-html", str(html)],
             [sys.executable, "-m", "funcprune.book.contentcheck", str(html), "--executed", str(book / "executed")],
             [sys.executable, "-m", "funcprune.book.bookcheck", str(html), "--no-screenshots",
              *(["--require-browser"] if find_chromium() else [])]]
    for step in steps:
        done = subprocess.run(step, cwd=REPO_ROOT, capture_output=True, text=True)
        assert done.returncode == 0, f"{' '.join(step[1:3])} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
