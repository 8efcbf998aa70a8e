"""Put a cluster head's datasets where launch.py finds them: `python -m deploy.datasets FOLDER [--download]`.

Run by the cluster files' head_setup_commands. FOLDER is a local or mounted copy of MNIST and Fashion-MNIST in
torchvision's layout (MNIST/raw, FashionMNIST/raw); every split is read here, so a missing or truncated file
stops `ray up` with one line naming it instead of the first training run. `--download` fetches what is missing
into FOLDER (torchvision; needs internet). The folder is then linked as `data` in the checkout (`~/gcrl/data`),
one of the places launch.py looks, wherever it runs from (`ray submit` runs it from the home folder).
"""

from __future__ import annotations

import sys
from pathlib import Path

from common.errors import DataError, OneLineParser, UserError
from common.storage.data import IDX_FILES, REPO_ROOT, TORCHVISION_FOLDERS, find_data_dir, load_goals

LINK = REPO_ROOT / "data"  # in default_data_dirs(): found from any working folder


def prepare(folder: Path, download: bool, link: Path = LINK) -> list[str]:
    """Check (or download) every split of every dataset in `folder`, then link it at `link`; one line per dataset."""
    folder = folder.expanduser().resolve()
    lines = []
    for dataset in TORCHVISION_FOLDERS:
        if download and find_data_dir(dataset, [folder]) is None:
            folder.mkdir(parents=True, exist_ok=True)
        sizes = [len(load_goals(dataset, folder, split, download)) for split in IDX_FILES]
        lines.append(f"{dataset}: {' + '.join(map(str, sizes))} images in {folder / TORCHVISION_FOLDERS[dataset]}")
    lines.append(link_folder(folder, link))
    return lines


def link_folder(folder: Path, link: Path) -> str:
    """Point `link` at `folder`; a real folder already there is left alone unless it is `folder` itself."""
    if link.resolve() == folder:
        return f"{link} is {folder}"
    if link.exists() and not link.is_symlink():
        raise DataError(f"{link} already exists and is not a link; move it away or pass that folder instead")
    if link.is_symlink():
        link.unlink()
    link.symlink_to(folder, target_is_directory=True)
    return f"linked {link} -> {folder}"


def main(argv: list[str] | None = None) -> int:
    """Entry point: one line per dataset, or `error: ...` on one line and status 2."""
    parser = OneLineParser(prog="python -m deploy.datasets", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="MNIST/ and FashionMNIST/ in torchvision's layout")
    parser.add_argument("--download", action="store_true", help="fetch what is missing into the folder")
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
        for line in prepare(args.folder, args.download):
            print(line, flush=True)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
