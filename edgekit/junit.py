"""JUnit XML for CI systems: one test case per build × target × device, the reason on failure."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path


def junit_xml(report: dict) -> ET.ElementTree:
    """The report (or a multi-target summary: one suite per target) as a JUnit ``testsuites`` document."""
    root = ET.Element("testsuites")
    for one in report.get("reports", [report]):
        root.append(_suite(one))
    return ET.ElementTree(root)


def _suite(report: dict) -> ET.Element:
    target = report.get("target", {}).get("name", "?")
    suite = ET.Element("testsuite", name=f"edgekit convert ({target})")
    failures = skipped = 0
    for row in report["builds"]:
        precision = row.get("requested_precision", row["precision"])
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"edgekit.{target}.{row.get('device', '?')}",
            name=f"{row['backend']} {precision}",
            time=f"{row.get('build_s', 0.0):.2f}",
        )
        violations = (row.get("budget") or {}).get("violations", [])
        if row["status"] == "failed":
            failures += 1
            ET.SubElement(case, "failure", message=row.get("reason", "failed"), type="build").text = row.get(
                "reason", ""
            )
        elif row["status"] == "skipped":
            skipped += 1
            ET.SubElement(case, "skipped", message=row.get("reason", ""))
        elif violations:
            failures += 1
            ET.SubElement(case, "failure", message="; ".join(violations), type="budget").text = "\n".join(violations)
        acc = row.get("accuracy") or {}
        out = [f"{k}={acc[k]}" for k in ("cosine", "top1_agreement", "max_abs") if k in acc]
        if row.get("latency_ms"):
            out.append(f"p50_ms={row['latency_ms']['p50']} ({row.get('latency_kind', '')})")
        ET.SubElement(case, "system-out").text = ", ".join(out)
    baseline = report.get("baseline")
    if baseline:
        case = ET.SubElement(suite, "testcase", classname=f"edgekit.{target}", name="baseline", time="0")
        if not baseline["passed"]:
            failures += 1
            message = "; ".join(baseline["violations"])
            ET.SubElement(case, "failure", message=message, type="baseline").text = message
    suite.set("tests", str(len(suite.findall("testcase"))))
    suite.set("failures", str(failures))
    suite.set("errors", "0")
    suite.set("skipped", str(skipped))
    return suite


def write_junit(report: dict, path: Path) -> None:
    tree = junit_xml(report)
    ET.indent(tree)
    tree.write(path, encoding="utf-8", xml_declaration=True)
