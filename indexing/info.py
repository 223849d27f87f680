"""``python -m indexing info``: what each published index is, costs and answers (from its manifest)."""

from __future__ import annotations

from pathlib import Path

from .catalog import CATALOG_NAME, connect, read_manifest
from .paths import DEFAULT_INDEX_DIR, index_dir_for
from .quality import describe_quality


def index_folders(index_dir: str | Path | None) -> list[Path]:
    """Every folder under ``index_dir`` holding a catalogue (models, and archives' model folders)."""
    root = Path(index_dir or DEFAULT_INDEX_DIR)
    return sorted(p.parent for p in root.glob(f"**/{CATALOG_NAME}") if "shards" not in p.parts)


def describe(folder: Path) -> str:
    con = connect(folder, read_only=True)
    try:
        manifest = read_manifest(con)
    finally:
        con.close()
    if not manifest:
        return f"{folder}: nothing published yet (a build is running or was killed: rerun it)"
    counts = manifest.get("counts", {})
    lines = [f"{folder}: {manifest.get('model')} on {manifest.get('archive')}",
             f"  {counts.get('images', '?')} images, {manifest['ntotal']} vectors x {manifest.get('dim', '?')} d, "
             f"{manifest['spec']}" + (f", nprobe {manifest['nprobe']}" if manifest.get("nprobe") else "")
             + (", inverted lists on disk" if manifest.get("ondisk") else "")
             + (f", re-ranked on {manifest['store']}.f16.npy" if manifest.get("store") else ""),
             f"  built {manifest.get('built_at', '?')}, file {manifest['index_file']}"]
    quality = dict(manifest.get("quality") or {})
    if not quality.get("bytes_per_vector"):
        path = folder / manifest["index_file"]
        if path.is_file():
            quality.update(index_bytes=path.stat().st_size, bytes_per_vector=path.stat().st_size / manifest["ntotal"])
    lines.append("  " + (describe_quality(quality) if "recall_at_10" in quality else
                         f"{quality.get('bytes_per_vector', 0):.1f} B/vector in RAM; recall not measured "
                         "(built before satjepa measured it: rebuild to measure)"))
    return "\n".join(lines)


def info(models: list[str] | None, index_dir: str | Path | None) -> str:
    folders = [index_dir_for(index_dir, m) for m in models] if models else index_folders(index_dir)
    if not folders:
        raise FileNotFoundError(f"no index in {index_dir or DEFAULT_INDEX_DIR}: build one with "
                                "`python -m indexing build --model ijepa`.")
    return "\n".join(describe(f) for f in folders)
