"""The clinic workflow: a triage worklist and report for a folder of X-rays and DICOM files.

    python examples/triage_worklist.py [FOLDER] [REPORT_FOLDER]

Defaults: the bundled example X-rays, into ./triage-report. Open REPORT_FOLDER/report.html in a
browser: the most likely pneumonias first, those at or above the threshold with a heatmap, a
line where they end. Rerun after adding files: already scored files are skipped.
"""

import sys
from pathlib import Path

from pneumocnn.clinic.triage import triage

folder = sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "xrays"
out = sys.argv[2] if len(sys.argv) > 2 else "triage-report"

worklist = triage(folder, out)
for row in worklist.rows:
    print(f"{row['probability'] or '-':>9}  {row['label'] or 'error':10} {row['file']}")
print(f"report: {worklist.html_path}")
