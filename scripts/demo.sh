#!/usr/bin/env bash
# Installs everything, then segments structures named in words on images the bundled models never saw:
# - the tumour (gross tumour volume) of a soft-tissue sarcoma patient held out from the GTV model's training
#   (../shared/data, STS_026: a typical held-out case), on its CT and on its FDG-PET;
# - with the default model (promptseg-starter): the whole tumour and the oedema of the held-out BRATS patient's
#   FLAIR, and the white and grey matter of nilearn's MNI152 brain template (shipped in the nilearn package);
# - without naming a model (routed to promptseg-hn-oars): seven organs at risk on the head-and-neck CT of OpenKBP
#   patient pt_235, one of the test patients no training run or choice saw (../shared/data).
# Writes out/*.seg.nrrd (open them in 3D Slicer over the images), PNG pictures and JSON boxes beside them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
DATA="../shared/data"
CASE="$DATA/sts_pet_ct_mr/nifti/STS_026"
BRATS="$DATA/brats2015/brats_2013_pat0006_1"
HN="$DATA/openkbp_hn_ct/validation/pt_235"
for folder in "$CASE" "$BRATS" "$HN"; do
  [ -d "$folder" ] || { echo "demo data not found: $folder (see $DATA/MANIFEST.md)" >&2; exit 1; }
done
mkdir -p out
.venv/bin/promptseg segment "$HN/ct.nii.gz" --modality CT --region "head and neck" --target brainstem \
  --target "spinal cord" --target "left parotid" --target "right parotid" --target esophagus --target larynx \
  --target mandible -o out/hn_pt235.seg.nrrd --overlay out/hn_pt235.png
for modality in CT PET; do
  name="$(echo "$modality" | tr '[:upper:]' '[:lower:]')"
  .venv/bin/promptseg segment "$CASE/${modality}_image.nii.gz" --model promptseg-sts-gtv --modality "$modality" \
    --region extremity --target "gross tumor volume" \
    -o "out/sts026_${name}.seg.nrrd" --overlay "out/sts026_${name}.png" --boxes "out/sts026_${name}_boxes.json"
done
.venv/bin/promptseg segment "$BRATS/Flair_subtrMeanDivStd.nii.gz" --modality MR --region brain \
  --target "whole tumor" --target edema -o out/brats006_flair.seg.nrrd --overlay out/brats006_flair.png \
  --boxes out/brats006_flair_boxes.json
MNI="$(.venv/bin/python -c 'from nilearn.datasets import MNI152_FILE_PATH; print(MNI152_FILE_PATH)')"
.venv/bin/promptseg segment "$MNI" --modality MR --region brain --target "white matter" --target "grey matter" \
  -o out/mni152.seg.nrrd --overlay out/mni152.png
