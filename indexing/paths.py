"""Where things live: the model registry (``assets/models/<name>/``), the demo archives and the index folder."""

from __future__ import annotations

from pathlib import Path

from training.encoder import CARD_NAME

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO_ROOT / "assets" / "models"
DEMO_ARCHIVE = REPO_ROOT / "assets" / "demo"
LOCATED_ARCHIVE = REPO_ROOT / "assets" / "located"
DEFAULT_INDEX_DIR = REPO_ROOT / "index"
#: The archives shipped in ``assets/``: name shown in the app -> (archive, its indexes' folder inside the index dir).
SHIPPED_ARCHIVES = {
    "EuroSAT demo (1,000 Sentinel-2 tiles, labelled)": (DEMO_ARCHIVE, "."),
    "Located: NAIP + Landsat chips (georeferenced)": (LOCATED_ARCHIVE, "located"),
}


def resolve_model(model: str | Path) -> Path:
    """The folder of an exported model: a path holding ``model_card.json``, or a name under ``assets/models/``.

    Raises:
        FileNotFoundError: neither exists; the message lists the registered names.
    """
    path = Path(model).expanduser()
    if (path / CARD_NAME).is_file():
        return path.resolve()
    registered = MODELS_DIR / str(model)
    if (registered / CARD_NAME).is_file():
        return registered
    names = sorted(p.name for p in MODELS_DIR.glob("*") if (p / CARD_NAME).is_file()) if MODELS_DIR.is_dir() else []
    raise FileNotFoundError(
        f"model {str(model)!r} is neither a folder with {CARD_NAME} nor a name in {MODELS_DIR} "
        f"(registered: {names or 'none yet'}): export one with `python -m training export RUN --out DIR` "
        "and pass --model DIR."
    )


def model_key(model: str | Path) -> str:
    """The name used for the model's index folder: the registry name, or the folder name of a path."""
    return Path(str(model)).name


def resolve_archive(archive: str | Path | None) -> Path:
    """``archive``, or the embedded demo archive when None; raises FileNotFoundError with what to do."""
    if archive is None:
        if not DEMO_ARCHIVE.exists():
            raise FileNotFoundError(
                f"no --archive given and the demo archive {DEMO_ARCHIVE} does not exist yet: pass --archive PATH "
                "(e.g. ../shared/data/eurosat-rgb)."
            )
        return DEMO_ARCHIVE
    path = Path(archive).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"archive {path} does not exist: pass --archive PATH of an image archive.")
    return path.resolve()


def index_dir_for(index_dir: str | Path | None, model: str | Path) -> Path:
    """``<index-dir>/<model key>/`` (default index dir: ``index/`` at the repo root)."""
    return Path(index_dir or DEFAULT_INDEX_DIR).expanduser() / model_key(model)
