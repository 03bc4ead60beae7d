#!/usr/bin/env bash
# Installs everything, then segments the tumour (gross tumour volume) of a soft-tissue sarcoma patient that
# the bundled GTV model never saw in training (../shared/data, STS_026: a typical held-out case), on its CT
# and on its FDG-PET, by naming it in words. Writes out/sts026_ct.seg.nrrd and out/sts026_pet.seg.nrrd (open
# them in 3D Slicer over the images), PNG pictures and JSON boxes beside them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
CASE="../shared/data/sts_pet_ct_mr/nifti/STS_026"
[ -d "$CASE" ] || { echo "demo data not found: $CASE (see ../shared/data/MANIFEST.md)" >&2; exit 1; }
mkdir -p out
for modality in CT PET; do
  name="$(echo "$modality" | tr '[:upper:]' '[:lower:]')"
  .venv/bin/promptseg segment "$CASE/${modality}_image.nii.gz" --model promptseg-sts-gtv --modality "$modality" \
    --region extremity --target "gross tumor volume" \
    -o "out/sts026_${name}.seg.nrrd" --overlay "out/sts026_${name}.png" --boxes "out/sts026_${name}_boxes.json"
done
