"""Render sections through the Jinja templates in `curate.data_cards` (card.md.j2, report.html.j2).
A folder passed as `template_dir` is searched first, so a team can restyle its cards."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import jinja2

from curate.cards import fmt
from curate.cards.facts import Facts
from curate.cards.metadata import metadata_yaml
from curate.cards.plots import PLOT_SIZES
from curate.cards.sections import Section, build_sections

CARD_TEMPLATE = "card.md.j2"
REPORT_TEMPLATE = "report.html.j2"
_INLINE = re.compile(r"`([^`]+)`|\*\*([^*]+)\*\*")


def _package_template(name: str) -> str | None:
    resource = resources.files("curate.data_cards").joinpath(name)
    return resource.read_text(encoding="utf-8") if resource.is_file() else None


def environment(template_dir: Path | None = None, *, autoescape: bool = False) -> jinja2.Environment:
    loaders: list[jinja2.BaseLoader] = [jinja2.FunctionLoader(_package_template)]
    if template_dir is not None:
        loaders.insert(0, jinja2.FileSystemLoader(str(template_dir)))
    env = jinja2.Environment(loader=jinja2.ChoiceLoader(loaders), autoescape=autoescape, trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    env.filters["md_cell"] = fmt.md_cell
    env.filters["inline_md"] = inline_markdown
    env.globals["fence"] = _fence
    return env


def inline_markdown(text: str) -> jinja2.filters.Markup:
    """The little Markdown section texts use (`code`, **bold**) as safe HTML."""
    out, last = [], 0
    for match in _INLINE.finditer(text):
        out.append(html.escape(text[last:match.start()]))
        if match.group(1) is not None:
            out.append(f"<code>{html.escape(match.group(1))}</code>")
        else:
            out.append(f"<strong>{html.escape(match.group(2))}</strong>")
        last = match.end()
    out.append(html.escape(text[last:]))
    return jinja2.filters.Markup("".join(out))


def _fence(text: str) -> str:
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def title(facts: Facts) -> str:
    return f"{facts['overview']['name']}: curated reasoning traces"


def intro(facts: Facts) -> str:
    over = facts["overview"]
    return (f"A distillation set of **{fmt.num(over['curated_rows'])}** verified reasoning traces, curated with "
            f"trace-curate {over['package_version']}: every number below is computed from the run's Parquet files.")


def render_card(facts: Facts, plots: dict[str, bytes], *, plot_dir: str = "plots",
                template_dir: Path | None = None) -> str:
    sections = build_sections(facts, set(plots))
    return _render(environment(template_dir), CARD_TEMPLATE, facts, sections,
                   lambda name: f"{plot_dir}/{name}.png")


def render_report(facts: Facts, plots: dict[str, bytes], *, template_dir: Path | None = None) -> str:
    sections = build_sections(facts, set(plots))

    def inline(name: str) -> str:
        return "data:image/png;base64," + base64.b64encode(plots[name]).decode("ascii")

    return _render(environment(template_dir, autoescape=True), REPORT_TEMPLATE, facts, sections, inline)


def _render(env: jinja2.Environment, name: str, facts: Facts, sections: list[Section],
            plot_src: Callable[[str], str]) -> str:
    template = env.get_template(name)
    return template.render(
        metadata_yaml=metadata_yaml(facts), title=title(facts), intro=intro(facts), sections=sections,
        plot_src=plot_src, plot_size=lambda n: PLOT_SIZES[n], package_version=facts["overview"]["package_version"],
    )
