"""``promptseg export-rtstruct`` and ``promptseg export-dicom-seg``: a segmentation file to DICOM objects that
reference the series it was drawn on. Registered into the main parser by :func:`add_subcommands`."""
from __future__ import annotations

import argparse
import sys

from PromptSegLib.cli.checks import add_roi_names_argument, structure_set_label
from PromptSegLib.export.segments import collect_warnings


def print_report(report, kind: str) -> None:
    for message in report.warnings:
        print(f"promptseg: warning: {message}", file=sys.stderr)
    for name in report.names:
        dice = report.dice.get(name)
        print(f"{name}: re-read Dice {dice:.4f}" if dice is not None else name)
    print(f"wrote {kind} {report.path} ({len(report.names)} "
          f"{'ROIs' if kind == 'RTSTRUCT' else 'segments'}"
          + (f"; skipped empty: {', '.join(report.skipped)}" if report.skipped else "") + ")")


def cmd_export_rtstruct(args: argparse.Namespace) -> int:
    from PromptSegLib.dicom.rtstruct import export_rtstruct

    report = collect_warnings(export_rtstruct, args.ct, args.seg, args.output, series_uid=args.series_uid,
                      default_interpreted_type=args.default_type, label=args.label, roi_names=args.roi_names)
    print_report(report, "RTSTRUCT")
    return 0


def cmd_export_dicom_seg(args: argparse.Namespace) -> int:
    from PromptSegLib.dicom.seg import export_dicom_seg

    report = collect_warnings(export_dicom_seg, args.ct, args.seg, args.output, series_uid=args.series_uid)
    print_report(report, "DICOM SEG")
    return 0


def add_subcommands(sub) -> None:
    """Register ``export-rtstruct`` and ``export-dicom-seg`` on the main parser's subparsers."""
    rt = sub.add_parser("export-rtstruct", help="write a DICOM RT structure set of a segmentation on a DICOM series")
    rt.add_argument("--ct", required=True, help="folder holding the DICOM series the segmentation was made on")
    rt.add_argument("--seg", required=True, help="segmentation file (.seg.nrrd)")
    rt.add_argument("-o", "--output", required=True, help="RTSTRUCT file to write, e.g. RS.dcm")
    rt.add_argument("--series-uid", help="which series when the folder holds several")
    rt.add_argument("--default-type", default="ORGAN",
                    help="RT ROI Interpreted Type of segments the vocabulary does not know (default ORGAN)")
    rt.add_argument("--label", default="PromptSeg", type=structure_set_label,
                    help="Structure Set Label (16 characters at most)")
    add_roi_names_argument(rt)
    rt.set_defaults(func=cmd_export_rtstruct)

    seg = sub.add_parser("export-dicom-seg", help="write a DICOM SEG of a segmentation on a DICOM series")
    seg.add_argument("--ct", required=True, help="folder holding the DICOM series the segmentation was made on")
    seg.add_argument("--seg", required=True, help="segmentation file (.seg.nrrd)")
    seg.add_argument("-o", "--output", required=True, help="DICOM SEG file to write, e.g. SEG.dcm")
    seg.add_argument("--series-uid", help="which series when the folder holds several")
    seg.set_defaults(func=cmd_export_dicom_seg)
