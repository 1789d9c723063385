"""Sphinx extension and check: one setting, the repository URL, fills every launch and repository button.

The setting is ``repository.url`` in ``book/_config.yml``, or the environment variable
``FUNCPRUNE_REPOSITORY_URL``, which overrides it (``make publish FUNCPRUNE_REPOSITORY_URL=https://github.com/me/funcprune``);
the JupyterHub button likewise reads ``launch_buttons.jupyterhub_url`` or ``FUNCPRUNE_JUPYTERHUB_URL``.
A value that is still a placeholder (it contains ``YOUR-``) turns its buttons off, with a
message at build time and a note on the teaching page (directive ``workshop-buttons``); the
build records what it did in ``_static/buttons.json``, and ``make publish`` refuses a site whose
buttons are off or built for another URL::

    python book/_ext/workshop_kit.py check-publish book/_build/html
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

PLACEHOLDER = "YOUR-"
RECORD = "_static/buttons.json"


def is_placeholder(url: str | None) -> bool:
    """Whether a configured URL is missing or still the shipped placeholder."""
    return not url or PLACEHOLDER in url


def configured_url(theme_url: str | None = None) -> str:
    """The repository URL of this build: ``$FUNCPRUNE_REPOSITORY_URL``, else the configured one."""
    return os.environ.get("FUNCPRUNE_REPOSITORY_URL") or theme_url or ""


def _apply(app: Any, config: Any) -> None:
    options = dict(config.html_theme_options or {})
    url = configured_url(options.get("repository_url"))
    launch = dict(options.get("launch_buttons") or {})
    hub = os.environ.get("FUNCPRUNE_JUPYTERHUB_URL") or launch.get("jupyterhub_url")
    state: dict[str, Any] = {"repository_url": url, "buttons": "on", "jupyterhub": "on"}
    if is_placeholder(url):
        options.update(repository_url="", use_repository_button=False, use_issues_button=False,
                       use_edit_page_button=False)
        launch = {k: v for k, v in launch.items() if not k.endswith("_url")}
        state.update(repository_url="", buttons="off", jupyterhub="off")
        print("[workshop_kit] launch and repository buttons are OFF in this build: set repository.url in "
              "book/_config.yml or FUNCPRUNE_REPOSITORY_URL to turn them on", file=sys.stderr)
    else:
        options["repository_url"] = url
        if is_placeholder(hub):
            launch.pop("jupyterhub_url", None)
            state["jupyterhub"] = "off"
            print("[workshop_kit] the JupyterHub button is OFF: set launch_buttons.jupyterhub_url or "
                  "FUNCPRUNE_JUPYTERHUB_URL", file=sys.stderr)
        else:
            launch["jupyterhub_url"] = hub
    options["launch_buttons"] = launch
    config.html_theme_options = options
    app.env_state = state  # read by the directive and written at the end


def _record(app: Any, exception: Exception | None) -> None:
    if exception is None and app.builder.format == "html":
        target = Path(app.outdir) / RECORD
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(getattr(app, "env_state", {}), indent=1))


def _directive() -> Any:
    from docutils import nodes
    from docutils.parsers.rst import Directive

    class WorkshopButtons(Directive):
        """A note saying where the launch buttons of this build point, or that they are off."""

        def run(self) -> list[Any]:
            app = self.state.document.settings.env.app
            state = getattr(app, "env_state", {})
            para = nodes.paragraph()
            if state.get("buttons") == "on":
                para += nodes.Text(f"The launch and repository buttons of this build open {state['repository_url']}"
                                   + ("" if state.get("jupyterhub") == "on" else
                                      "; the JupyterHub button is off (no hub set)") + ".")
            else:
                para += [nodes.Text("The launch and repository buttons are off in this build: no repository URL "
                                    "is set. Set it once ("),
                         nodes.literal(text="repository.url"), nodes.Text(" in "),
                         nodes.literal(text="book/_config.yml"), nodes.Text(", or "),
                         nodes.literal(text="FUNCPRUNE_REPOSITORY_URL"),
                         nodes.Text(") and every button follows it; "), nodes.literal(text="make publish"),
                         nodes.Text(" refuses a site without it.")]
            return [nodes.note("", para)]

    return WorkshopButtons


def check_publish(html_dir: str | Path, url: str | None = None) -> str | None:
    """Why a built site must not be published, or None when it may be.

    Parameters
    ----------
    html_dir : str or path
        The built site.
    url : str, optional
        The URL the site must have been built for (default: :func:`configured_url` of the
        ``repository.url`` in ``book/_config.yml``).
    """
    record = Path(html_dir) / RECORD
    if not record.is_file():
        return f"{record} is missing: build the book first (make book)"
    state = json.loads(record.read_text())
    if url is None:
        import yaml

        config = Path(__file__).resolve().parents[1] / "_config.yml"
        url = configured_url((yaml.safe_load(config.read_text()).get("repository") or {}).get("url"))
    if is_placeholder(url):
        return ("the repository URL is still a placeholder: set repository.url in book/_config.yml or "
                "FUNCPRUNE_REPOSITORY_URL, then make publish again")
    if state.get("buttons") != "on" or state.get("repository_url") != url:
        return (f"the site was built for {state.get('repository_url') or 'no repository (buttons off)'}, not {url}: "
                f"rebuild it (NOCACHE=1 make publish)")
    return None


def setup(app: Any) -> dict[str, Any]:
    app.connect("config-inited", _apply)
    app.connect("build-finished", _record)
    app.add_directive("workshop-buttons", _directive())
    return {"parallel_read_safe": True, "parallel_write_safe": True}


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "check-publish":
        print("usage: python book/_ext/workshop_kit.py check-publish <html dir>", file=sys.stderr)
        raise SystemExit(2)
    reason = check_publish(sys.argv[2])
    if reason:
        print(f"[workshop_kit] not published: {reason}", file=sys.stderr)
        raise SystemExit(1)
    print("[workshop_kit] the site's buttons point at the configured repository", file=sys.stderr)
