"""The Hub YAML header of a card: licence, task and size categories, sources and configs."""

from __future__ import annotations

import re
from typing import Any

import yaml

from curate.cards.facts import Facts

# Licence ids (as the Hub spells them) whose terms forbid commercial use, plus a pattern for the
# families that say so in their name (cc-by-nc-*, *-noncommercial, *-nc-*).
NON_COMMERCIAL = {"cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0",
                  "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0", "deepfloyd-if-license"}
_NC_PATTERN = re.compile(r"(^|[-_.\s])(nc|noncommercial|non-commercial)([-_.\s]|$)")
# (upper bound exclusive, Hub size category)
_SIZES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
          (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"),
          (10_000_000_000, "1B<n<10B"))
_DOMAIN_TAGS = {"math": "math", "code": "code", "science": "science"}


def normalise_license(value: str | None) -> str:
    return (value or "unknown").strip().lower() or "unknown"


def is_non_commercial(license_id: str) -> bool:
    lid = normalise_license(license_id)
    return lid in NON_COMMERCIAL or bool(_NC_PATTERN.search(lid))


def license_summary(facts: Facts) -> dict[str, Any]:
    """The set's licence: the sources' one when they agree, else `other` with the list."""
    found = sorted({normalise_license(r["license"]) for r in facts["licenses"]})
    non_commercial = [lid for lid in found if is_non_commercial(lid)]
    if len(found) == 1:
        return {"license": found[0], "licenses": found, "non_commercial": non_commercial}
    return {"license": "other", "licenses": found, "non_commercial": non_commercial}


def size_category(rows: int) -> str:
    for bound, label in _SIZES:
        if rows < bound:
            return label
    return "n>10B"


def config_path(name: str) -> str:
    return f"data/{name}/*.parquet"


def hub_metadata(facts: Facts) -> dict[str, Any]:
    over = facts["overview"]
    lic = license_summary(facts)
    meta: dict[str, Any] = {"license": lic["license"]}
    if lic["license"] == "other":
        meta["license_name"] = "mixed-source-licenses"
        meta["license_details"] = "Rows keep their source's licence (column `license`): " + ", ".join(lic["licenses"])
        meta["source_licenses"] = lic["licenses"]
    meta["pretty_name"] = over["name"]
    meta["task_categories"] = ["text-generation"]
    tags = ["reasoning", "distillation", "synthetic", "trace-curate"]
    tags += [_DOMAIN_TAGS[d] for d in over["domains"] if d in _DOMAIN_TAGS]
    if lic["non_commercial"]:
        tags.append("non-commercial")
    meta["tags"] = tags
    meta["size_categories"] = [size_category(over["curated_rows"])]
    meta["source_datasets"] = sorted({r["source"] for r in facts["sources"] or []}) or ["original"]
    meta["configs"] = [
        {"config_name": name, **({"default": True} if name == "curated" else {}),
         "data_files": [{"split": "train", "path": config_path(name)}]}
        for name in over["configs"]
    ]
    return meta


def metadata_yaml(facts: Facts) -> str:
    return yaml.safe_dump(hub_metadata(facts), sort_keys=False, allow_unicode=True, width=1000)
