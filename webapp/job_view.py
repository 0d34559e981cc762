"""The page's one job, wired to every place that shows or edits it (Gradio glue for job_form).

Steps 1-3 and the expert TOML all edit the same job (a ``gr.State``); every edit re-renders the
other views at once: the base and dataset boxes, the method and its fields, the TOML, the list
of settings only the TOML shows, the steps arithmetic and the summary above Start. An edit never
re-renders the widget being typed in. Every event that reads or changes the job runs in one
queue (``CONCURRENCY``), one after the other in the order they happened: two quick edits never
overwrite each other, and Start, clicked right after typing, sees the typed value.
"""
from __future__ import annotations

import tomllib
from typing import Any, Callable

import tomli_w

from engine.i18n import Translator, describe_error
from webapp import job_form as jf
from webapp.wizard_logic import Plan, plan, steps_text

CONCURRENCY = {"concurrency_id": "job", "concurrency_limit": 1}  # for every event on the job
# [model] settings that belong to one family's base: a base of another family starts without them
FAMILY_SPECIFIC = ("family", "config_dir", "vae", "clip_l", "t5xxl", "t5_tokenizer")


class JobView:
    def __init__(self, t: Translator, ws, tier_name: str, runner=None) -> None:
        self.t, self.ws, self.tier_name, self.runner = t, ws, tier_name, runner
        self.state = self.base = self.dataset = self.method = self.tier = None
        self.fields: dict[str, Any] = {}
        self.toml = self.expert = self.arith = self.summary = None
        self.later: list[Callable[[], Any]] = []  # events whose outputs span later steps

    # ------------------------------------------------------------ rendering

    def outputs(self) -> list:
        return [self.state, self.base, self.dataset, self.method, *self.fields.values(), self.toml,
                self.expert, self.arith, self.summary]

    def plan(self, job: dict[str, Any]) -> Plan:
        return plan(job, self.t, self.ws, self.seconds_per_step(job))

    def seconds_per_step(self, job: dict[str, Any]) -> float | None:
        """This machine's measured time per step, from the last run of the same kind (base
        model, method, resolution, batch size, precision): the time estimate of Check job."""
        from pathlib import Path

        from engine.training.runs import read_run

        s = self.runner.snapshot() if self.runner is not None else None
        if s is None or not s.run_dir or not s.steps_per_second or s.status == "running":
            return None
        from engine.config.job import ConfigError, load_config, parse_config

        run = read_run(Path(s.run_dir))
        try:
            ran, now = load_config(run.job), parse_config(job)
        except (ConfigError, AttributeError):  # no run there any more, or the page's job is not valid
            return None
        same = ("model.base", "network.type", "dataset.resolution", "training.batch_size",
                "training.mixed_precision")
        if any(_at(ran, k) != _at(now, k) for k in same):
            return None
        return 1.0 / s.steps_per_second

    def render(self, job: dict[str, Any], skip: Any = None, checked: Plan | None = None,
               before: dict[str, Any] | None = None) -> list:
        """New values for :meth:`outputs`. ``skip``: the widget being edited keeps its text;
        ``before``: the job before this edit; only widgets whose value changed are updated, so
        a field the user is typing in right now is never overwritten by an edit elsewhere."""
        import gradio as gr

        t, method = self.t, jf.method_of(job)
        values = jf.form_values(job)
        old = jf.form_values(before) if before is not None else {}
        same_method = before is not None and jf.method_of(before) == method

        def plain(value, old_value):
            return gr.skip() if before is not None and value == old_value else value

        out: list = [job, plain(job.get("model", {}).get("base", ""), (before or {}).get("model", {}).get("base")),
                     plain(job.get("dataset", {}).get("path", ""), (before or {}).get("dataset", {}).get("path")),
                     plain(method, jf.method_of(before) if before is not None else None)]
        for key in self.fields:
            if same_method and key in values and key in old and values[key] == old[key]:
                out.append(gr.skip())
            else:
                out.append(gr.update(value=values[key], visible=True) if key in values else gr.update(visible=False))
        out.append(tomli_w.dumps(job))
        extra = jf.expert_only(job)
        out.append(t("method.expert_only", settings=", ".join(extra)) if extra else "")
        checked = checked or self.plan(job)
        per_epoch = checked.dataset.num_per_epoch if checked.dataset else 0
        training = job.get("training", {})
        out.append(steps_text(per_epoch, training.get("epochs", 10), training.get("batch_size", 1),
                              training.get("gradient_accumulation_steps", 1), t))
        out.append(self.summary_text(checked))
        comps = self.outputs()
        return [gr.skip() if skip is not None and comp is skip else value for comp, value in zip(comps, out)]

    def summary_text(self, checked: Plan) -> str:
        """The plan as Markdown; paths and names shown literally (``my_green`` is no emphasis)."""
        t = self.t
        text = f"**{t('train.summary_title')}**\n\n{md_lines(checked.text)}"
        if checked.warnings:
            text += f"\n\n{t('warn.title')}\n" + "\n".join(f"- {md_lines(w)}" for w in checked.warnings)
        return text

    def set_base(self, job: dict[str, Any], base: str) -> dict[str, Any]:
        """A new base model; only the embedded model stays offline-only. Leaving the embedded
        demo model, or moving to a base of another family, sets the family's own training
        resolution (the demo's tiny one, or SD 1.5's 512 for SDXL / Flux.1, would draw blurry),
        drops the old family's model files (VAE, config folder, Flux's encoders), finds a Flux
        transformer file's encoders and VAE beside it (ComfyUI's / Forge's models folder), and
        then applies this machine's tier for that family (its memory settings), once per change."""
        from engine.models import families
        from engine.models.loader import EMBEDDED_NAMES, family_of_base

        base = (base or "").strip()
        old = job.get("model", {}).get("base", "")
        if base == old:
            return job
        job = jf.set_value(job, "model.base", base)
        job = jf.set_value(job, "model.local_files_only", True if base in EMBEDDED_NAMES else None)
        if base in EMBEDDED_NAMES:
            return job
        family, old_family = family_of_base(base), family_of_base(old)
        left_demo = old in EMBEDDED_NAMES
        if family in families.BY_ID and (left_demo or family != old_family):
            if self.tier_name and not left_demo and old_family in families.BY_ID:
                job = drop_tier(job, self.tier_name, old_family)  # (e.g. Flux's quantized base)
            for name in FAMILY_SPECIFIC:  # (read from the new base; another family's VAE or encoders fail)
                job = jf.set_value(job, f"model.{name}", None)
            job = jf.set_value(job, "dataset.resolution", families.family(family).default_resolution)
        elif not left_demo:
            return job
        if family == "flux1":
            job = with_flux_files(job, base, self.ws)
        return apply_tier(job, self.tier_name) if self.tier_name else job

    # ------------------------------------------------------------ events

    def edit(self, change: Callable[..., dict[str, Any]], skip: Any = None):
        """A handler: (job, value) -> the job changed by ``change(job, value)``, re-rendered."""
        def handler(job, value):
            return self.render(change(job, value), skip=skip, before=job)
        return handler

    def wire(self) -> None:
        """Register every edit event (and the steps' deferred ones), once all views exist."""
        import gradio as gr

        for register in self.later:
            register()
        outs = self.outputs()
        set_dataset = self.edit(lambda j, v: with_dataset(j, v), self.dataset)
        self.base.input(self.edit(self.set_base, self.base), [self.state, self.base], outs,
                        api_name="set_base", **CONCURRENCY)
        self.dataset.input(set_dataset, [self.state, self.dataset], outs, api_name="set_dataset", **CONCURRENCY)
        # a value put in without typing (pasted, filled in by the browser) arrives when the box is left
        for box, handler in ((self.base, self.edit(self.set_base, self.base)), (self.dataset, set_dataset)):
            box.blur(handler, [self.state, box], outs, api_visibility="private", **CONCURRENCY)
        self.method.input(self.edit(jf.set_method), [self.state, self.method], outs, api_name="set_method",
                          **CONCURRENCY)
        self.tier.input(self.edit(apply_tier), [self.state, self.tier], outs, api_name="apply_tier", **CONCURRENCY)
        for key, comp in self.fields.items():
            field = jf.BY_KEY[key]
            handler = self.edit(lambda j, v, k=key: jf.apply_fields(j, {k: v}), comp)
            comp.input(handler, [self.state, comp], outs, api_name=f"set_{field.section}_{field.name}",
                       api_visibility="undocumented", **CONCURRENCY)
            if hasattr(comp, "blur"):
                comp.blur(handler, [self.state, comp], outs, api_visibility="private", **CONCURRENCY)

        def typed(job, text):
            try:
                new = tomllib.loads(text)
            except (tomllib.TOMLDecodeError, RecursionError):
                from engine.config.job import ConfigError, read_toml

                try:
                    read_toml(text)
                except ConfigError as keyed:
                    err = keyed
                return [gr.skip()] * (len(outs) - 3) + [self.t("method.toml_bad", error=describe_error(err, self.t)),
                                                         gr.skip(), gr.skip()]
            return self.render(new, skip=self.toml, before=job)
        self.toml.input(typed, [self.state, self.toml], outs, api_name="set_job_toml", **CONCURRENCY)

    def refresh(self, job):
        """Re-render after something outside the views changed (an import set the dataset)."""
        return self.render(job)


def _at(cfg, path: str) -> Any:
    section, name = path.split(".")
    return getattr(getattr(cfg, section), name)


def with_dataset(job: dict[str, Any], folder: str) -> dict[str, Any]:
    """The job training ``folder``. Leaving the demo's images drops the demo's description
    ("a purple star..."), so a model card never describes the demo for someone's own images."""
    from webapp.wizard_logic import demo_job

    demo = demo_job()
    job = jf.set_value(job, "dataset.path", (folder or "").strip())
    if job["dataset"]["path"] != demo["dataset"]["path"] and \
            job.get("output", {}).get("description") == demo["output"].get("description"):
        job = jf.set_value(job, "output.description", None)
    return job


def md_lines(text: str) -> str:
    """``text`` for Markdown: characters that would format or become HTML are escaped; a
    leading "- " stays a list item."""
    import re

    def line(s: str) -> str:
        head = "- " if s.startswith("- ") else ""
        return head + re.sub(r"([\\`*_\[\]<>|#])", r"\\\1", s[len(head):])
    return "\n".join(line(s) for s in text.splitlines())


def with_flux_files(job: dict[str, Any], base: str, ws=None) -> dict[str, Any]:
    """A Flux transformer file in a ComfyUI / Forge models folder: its CLIP-L, T5-XXL and VAE
    files from that folder, where the job names none (shown in the expert view, changeable).
    On an exposed server (``ws``) only a base inside the workspace is looked beside, and only
    files inside it are named: the page never learns of files outside."""
    from pathlib import Path

    from engine.models.flux_files import find_beside
    from webapp.security import PathNotAllowed

    def allowed(path: str | Path) -> bool:
        try:
            return ws is None or bool(ws.path(path))
        except PathNotAllowed:
            return False

    model = job.get("model", {})
    if not allowed(base) or not Path(base).expanduser().is_file() or model.get("config_dir"):
        return job
    for name, path in find_beside(Path(base)).items():
        if not model.get(name) and allowed(path):
            job = jf.set_value(job, f"model.{name}", str(path))
    return job


def drop_tier(job: dict[str, Any], tier: str, family: str) -> dict[str, Any]:
    """The job without what ``tier`` sets for ``family`` (back to the defaults), before the tier
    of another family is applied: settings only one family has must not stay behind."""
    from engine.config.tiers import load_tier

    for section, values in load_tier(tier, family).items():
        for name in values:
            job = jf.set_value(job, f"{section}.{name}", None)
    return job


def apply_tier(job: dict[str, Any], tier: str) -> dict[str, Any]:
    """The tier's memory settings over the job (the keys the job's method has)."""
    from engine.config.tiers import job_family, keep_text_encoder_cache_valid, load_tier

    method = jf.method_of(job)
    for section, values in load_tier(tier, job_family(job)).items():
        for name, value in values.items():
            if jf.field_info(jf.FormField(section, name), method) is not None:
                job = jf.set_value(job, f"{section}.{name}", value)
    return keep_text_encoder_cache_valid(job)
