#!/usr/bin/env bash
# Installs everything, then segments both lungs of the real chest CT shipped in the slicerio package with the
# bundled starter model, writing out/chest.seg.nrrd (open it in 3D Slicer) and out/chest.png.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
CT="$(.venv/bin/python -c 'import slicerio, pathlib; print(pathlib.Path(slicerio.__file__).parent / "data" / "CTChest4.nrrd")')"
mkdir -p out
.venv/bin/promptseg segment "$CT" --modality CT --region thorax \
  --target "left lung" --target "right lung" --target "vertebral column" \
  -o out/chest.seg.nrrd --overlay out/chest.png
