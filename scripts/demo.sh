#!/usr/bin/env bash
# Installs everything, then segments the liver, spleen, stomach and aorta in a real CT DICOM series of a
# patient the bundled starter model never saw in training (../shared/data, TotalSegmentator's example
# series), writing out/abdomen.seg.nrrd (open it in 3D Slicer over the series), out/abdomen.png and
# out/abdomen_boxes.json.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
SERIES="../shared/data/totalsegmentator_example/ct_dicom_series/dicom"
[ -d "$SERIES" ] || { echo "demo data not found: $SERIES (see ../shared/data/MANIFEST.md)" >&2; exit 1; }
mkdir -p out
.venv/bin/promptseg segment "$SERIES" --modality CT --region abdomen \
  --target liver --target spleen --target stomach --target aorta \
  -o out/abdomen.seg.nrrd --overlay out/abdomen.png --boxes out/abdomen_boxes.json
