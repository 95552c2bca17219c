"""The `mlx-ttsi` command: a thin click layer over the library.

Answers go to stdout, progress to stderr. Options come from flags > environment (MLX_TTSI_*) >
the config file (`mlx-ttsi config-path`) > defaults.
"""

import json
import os
import sys
import time
from functools import partial
from pathlib import Path

import click

from .embedded import DEFAULT as DEFAULT_MODEL
from .embedded import EMBEDDED
from .errors import RequestError, TTSIError
from .serve.streaming import WORDS


def model_option(f):
    return click.option(
        "-m",
        "--model",
        default=DEFAULT_MODEL,
        show_default=True,
        envvar="MLX_TTSI_MODEL",
        help=f"Embedded model ({', '.join(EMBEDDED)}), .gguf file, mlx-lm directory or Hugging Face repo id.",
    )(f)


def table_option(option, **extra):
    """A click option made from a row of the settings table (settings.py)."""
    if option.choices:
        kind = click.Choice(option.choices)
    elif option.kind is int:
        kind = click.IntRange(option.low, option.high)
    elif option.kind is float:
        kind = click.FloatRange(option.low, option.high)
    else:
        kind = None
    env = {"envvar": "MLX_TTSI_" + option.name.upper()} if option.env else {}
    flags = [option.cli_flag] + ([option.short] if option.short else [])
    return click.option(
        *flags,
        option.name,
        **{"type": kind, "default": option.default, "show_default": True, "help": option.help, **env, **extra},
    )


def adaptation_options(f):
    """Options shared by ask, eval and serve: how and when to self-improve (mode and seed apart), and
    how the model and the teacher are loaded."""
    from .settings import OPTIONS

    options = [
        table_option(o)
        for o in OPTIONS
        if o.group in ("agent", "lora", "load") and o.name not in ("mode", "seed", "max_tokens")
    ]
    options.append(
        click.option(
            "--teacher",
            envvar="MLX_TTSI_TEACHER",
            help="TT-D teacher: a model (as --model) or an OpenAI-compatible base URL.",
        )
    )
    for option in reversed(options):
        f = option(f)
    return f


def setting_option(name, **extra):
    from .settings import BY_NAME

    return table_option(BY_NAME[name], **extra)


def need_teacher(ttd, teacher, what="--mode ttd"):
    """A one-line error, before the model loads, when TT-D is asked for (`ttd`) with no --teacher."""
    if ttd and not teacher:
        raise TTSIError(f"{what} needs --teacher (a model or an OpenAI-compatible URL)")


def build_agent(model, precision, teacher, teacher_model, adapter_path=None, **settings):
    """Load the model and make an Agent from CLI option values (with --adapter-path, one that answers with it)."""
    from .agent import Agent
    from .settings import Settings

    saved = None
    if adapter_path:
        from . import saved_adapter

        settings.update(saved_adapter.lora_options(adapter_path))  # the adapter fixes the LoRA's shape
        saved = saved_adapter.load_weights(adapter_path)
    return Agent.load(
        model,
        precision=precision,
        settings=Settings.from_options(settings),
        teacher=teacher,
        teacher_model=teacher_model,
        api_key=os.environ.get("MLX_TTSI_TEACHER_API_KEY"),
        saved=saved,
    )


def adapter_path_option(f):
    return click.option(
        "--adapter-path",
        type=click.Path(file_okay=False),
        envvar="MLX_TTSI_ADAPTER_PATH",
        help="Answer with this saved LoRA adapter (from --save-adapter or mlx_lm.lora) instead of training "
        "one; its adapter_config.json sets --rank, --alpha and --layers.",
    )(f)


def check_adapter_mode(adapter_path, mode):
    if adapter_path and mode not in ("auto", "ttsi", "check"):  # check: the default mode
        raise click.UsageError(f"--adapter-path answers with the saved adapter: it does not go with --mode {mode}")


def prepare_adapter_dir(directory, force):
    """--save-adapter's directory, checked before the model loads (saved_adapter.prepare)."""
    from .saved_adapter import prepare

    return prepare(directory, force)


def adapter_written(directory):
    """When DIR's weights were last written (None: never), to tell whether a request wrote them."""
    from .saved_adapter import WEIGHTS

    path = Path(directory or ".") / WEIGHTS
    return path.stat().st_mtime_ns if directory and path.exists() else None


def tell_nothing_saved(directory, answer, created):
    """Say why --save-adapter wrote nothing (and remove the directory if it was made for it)."""
    why = answer.note or ("the request was not adapted" if not answer.adapted else f"{answer.method} trains no LoRA")
    if created:
        Path(directory).rmdir()
    click.echo(f"note: nothing written to {directory}: {why}", err=True)


def progress_printer(quiet):
    def report(phase, seconds, detail=""):
        if quiet:
            return
        if phase in WORDS:  # a word about the request, not a timed phase
            click.echo(f"{phase}: {detail}", err=True)
        else:
            click.echo(f"{phase:<10} {seconds:7.2f}s  {detail}".rstrip(), err=True)

    return report


def read_json_file(path, what):
    from .files import read_json
    from .tools import loads

    parse = partial(loads, what=f"{what} file {path}")  # its nesting limited before it is parsed
    return read_json(path, f"{what} file", RequestError, parse=parse, stdin=True)


class UserError(click.ClickException):
    """A TTSIError shown as one line, exit status 1."""

    def show(self, file=None):
        click.echo(f"Error: {self.message}", err=True)


class Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TTSIError as error:
            raise UserError(str(error)) from None
        except KeyboardInterrupt:
            raise click.Abort() from None


LOG_LEVELS = ["debug", "info", "warning", "error"]


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mlx-ttsi")
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="warning",
    show_default=True,
    envvar="MLX_TTSI_LOG_LEVEL",
    help="Log messages of this level and above to stderr (debug: every phase and its timing).",
)
def cli(log_level):
    """LLM agents that improve themselves at test time, on MLX."""
    import logging

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True
    )


@cli.command()
@click.argument("request", required=False)
@click.option("--tools", "-t", "tools_file", type=click.Path(dir_okay=False), help="JSON file of tool specs.")
@click.option("-s", "--system-prompt", help="A system message before the request.")
@click.option(
    "--messages",
    "messages_file",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="JSON file with a conversation (a list of messages, or {messages, tools}).",
)
@model_option
@setting_option("mode")
@adaptation_options
@setting_option("seed")
@setting_option("max_tokens")
@click.option(
    "--save-adapter",
    type=click.Path(file_okay=False),
    help="Keep the trained LoRA here as an mlx-lm adapter, in a new or empty directory "
    "(nothing is written when the request is not adapted).",
)
@click.option("--force", is_flag=True, help="Let --save-adapter overwrite the adapter in a non-empty directory.")
@adapter_path_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with the full result.")
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
def ask(
    request,
    tools_file,
    system_prompt,
    messages_file,
    model,
    mode,
    precision,
    teacher,
    teacher_model,
    seed,
    save_adapter,
    force,
    adapter_path,
    as_json,
    quiet,
    **settings,
):
    """Answer REQUEST (- reads it from stdin), self-improving first when the model is unsure."""
    from .tools import load_tools, parse_tools

    check_adapter_mode(adapter_path, mode)
    if adapter_path and save_adapter:
        raise click.UsageError("--adapter-path answers without training: there is no new adapter to --save-adapter")
    if request == "-":
        request = sys.stdin.read()
    messages, tools = None, None
    if messages_file:
        data = read_json_file(messages_file, "messages")
        messages = data.get("messages") if isinstance(data, dict) else data
        if isinstance(data, dict) and data.get("tools") and not tools_file:
            tools = parse_tools(data["tools"])
        if request:
            raise click.UsageError("give either REQUEST or --messages, not both")
    elif request is None or not request.strip():
        raise RequestError("the request is empty: give REQUEST or --messages FILE")
    if tools_file:
        tools = load_tools(tools_file)
    if system_prompt:
        messages = [{"role": "system", "content": system_prompt}, *(messages or [{"role": "user", "content": request}])]
        request = None
    need_teacher(mode == "ttd", teacher)
    created = prepare_adapter_dir(save_adapter, force) if save_adapter else False
    report = progress_printer(quiet)
    started = time.perf_counter()
    agent = build_agent(model, precision, teacher, teacher_model, adapter_path, mode=mode, seed=seed, **settings)
    report("loading", time.perf_counter() - started, agent.name)
    before = adapter_written(save_adapter)
    answer = agent.ask(request, tools=tools, messages=messages, progress=report, save_adapter=save_adapter)
    if save_adapter and adapter_written(save_adapter) == before:
        tell_nothing_saved(save_adapter, answer, created)
    if as_json:
        click.echo(json.dumps(answer.as_dict(), ensure_ascii=False))
    elif answer.tool_calls:
        for call in answer.tool_calls:
            click.echo(json.dumps(call, ensure_ascii=False))
    else:
        click.echo(answer.answer)


@cli.command("eval")
@click.option(
    "--data",
    "-d",
    multiple=True,
    required=True,
    metavar="FILE",
    help="Benchmark JSONL file; repeat for several (e.g. ../shared/benchmarks/sealtool.jsonl).",
)
@click.option(
    "--methods",
    default="base,ttsi",
    show_default=True,
    help="Comma-separated: base, ttsi, ttd (needs --teacher), ticl, ttsi-all / ttd-all (adapt on every row), "
    "self-label (the checked answer, no training), plan (brief reasoning), the example-source variants "
    "ttsi-calls-all, ttsi-anchored-all, ttsi-checked-all, ttsi-verified-all, ttsi-requests-all, ttsi-twins(-all), ttsi-paper(-all) "
    "(docs/eval.md), and the ceilings oracle / oracle-twin (train on the gold answer / twins of it).",
)
@click.option(
    "--out",
    "-o",
    required=True,
    type=click.Path(file_okay=False),
    help="Directory for results.jsonl, summary.json/.md and plots; rerun the command to resume.",
)
@click.option("--limit", type=click.IntRange(1), help="Only the first N rows of each data file.")
@click.option("--sample", type=click.IntRange(1), help="N random rows of each data file, drawn with the first seed.")
@click.option(
    "--seed",
    "seeds",
    multiple=True,
    default=["0"],
    show_default=True,
    metavar="SEEDS",
    help="Run seed; repeat or comma-separate (0,1,2) for mean and spread.",
)
@click.option(
    "--threshold-sweep",
    "sweep",
    metavar="TAUS",
    help="Taus for the sweep, e.g. 0.1,0.3,0.5 [default: 0,0.1,...,0.9,0.95,1].",
)
@click.option(
    "--batch-rows",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Answer N rows of a file side by side for methods that never train (base, self-label, plan); "
    "the same answers, their forward passes batched.",
)
@model_option
@adaptation_options
@click.option("-q", "--quiet", is_flag=True, help="No progress bar on stderr.")
@click.pass_context
def eval_command(
    ctx,
    data,
    methods,
    out,
    limit,
    sample,
    seeds,
    sweep,
    batch_rows,
    model,
    precision,
    teacher,
    teacher_model,
    quiet,
    **settings,
):
    """Score methods on benchmark files: results are kept as they come, so a rerun resumes.

    Under `mlx.launch -n N -- mlx-ttsi eval ...` each rank takes every N-th row."""
    from .evaluation import report, runner
    from .evaluation.methods import METHODS, parse_methods
    from .evaluation.rows import load_rows, select

    methods = parse_methods(methods)
    need_teacher(any(METHODS[m][0] == "ttd" for m in methods), teacher, "method ttd")
    seeds = runner.parse_seeds(seeds)
    # --max-calls given (flag or config file) applies everywhere; else a per-benchmark default
    explicit = ctx.get_parameter_source("max_calls") is not click.core.ParameterSource.DEFAULT
    max_calls = settings["max_calls"] if explicit else None
    recorded = {
        **settings,
        "model": model,
        "precision": precision,
        "teacher": teacher,
        "teacher_model": teacher_model if teacher else None,
        "max_calls": max_calls or "per benchmark",
    }
    plan = runner.EvalPlan(
        select(load_rows(data), limit, sample, seeds[0]),
        methods,
        seeds,
        taus=runner.parse_taus(sweep) if sweep else runner.DEFAULT_SWEEP,
        max_calls=max_calls,
        settings=recorded,
        batch_rows=batch_rows,
    )

    def load():  # only when rows are left to run
        started = time.perf_counter()
        agent = build_agent(model, precision, teacher, teacher_model, seed=seeds[0], **settings)
        progress_printer(quiet)("loading", time.perf_counter() - started, agent.name)
        return agent

    summary = runner.evaluate(plan, out, load_agent=load, progress=not quiet)
    if summary is not None:  # rank 0
        click.echo(report.markdown(summary, sweep=False), nl=False)
        if not quiet:
            plots = " and plots" if report.can_plot() else "; no plots written (matplotlib is not installed)"
            click.echo(f"wrote {Path(out) / 'summary.md'} (threshold sweep included){plots}", err=True)


@cli.command()
@model_option
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    envvar="MLX_TTSI_HOST",
    help="Address to listen on; loopback only unless you change it.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8080,
    show_default=True,
    envvar="MLX_TTSI_PORT",
    help="Port to listen on (0: any free port).",
)
@setting_option("mode")
@click.option("--api-key", envvar="MLX_TTSI_API_KEY", help="Require `Authorization: Bearer KEY` on every /v1 request.")
@click.option("--memory", is_flag=True, help="Keep the adapters trained for uncertain requests and reuse them.")
@setting_option("memory_size")
@setting_option("memory_similarity")
@setting_option("max_queue")
@setting_option("parallel")
@adaptation_options
@setting_option("seed")
@adapter_path_option
@click.option("-q", "--quiet", is_flag=True, help="No request log on stderr.")
def serve(
    model,
    host,
    port,
    mode,
    api_key,
    memory,
    memory_size,
    memory_similarity,
    max_queue,
    parallel,
    precision,
    teacher,
    teacher_model,
    seed,
    adapter_path,
    quiet,
    **settings,
):
    """Serve the model behind an OpenAI-compatible API (POST /v1/chat/completions)."""
    import ipaddress
    import signal

    from .serve.adapter_memory import AdapterMemory
    from .serve.http import make_server

    check_adapter_mode(adapter_path, mode)
    if adapter_path and memory:
        raise click.UsageError("--adapter-path answers every request with one adapter: it does not go with --memory")
    need_teacher(mode == "ttd", teacher)
    started = time.perf_counter()
    agent = build_agent(model, precision, teacher, teacher_model, adapter_path, mode=mode, seed=seed, **settings)
    progress_printer(quiet)("loading", time.perf_counter() - started, agent.name)
    store = AdapterMemory.for_agent(agent, memory_size, memory_similarity) if memory else None
    try:
        server = make_server(
            agent,
            host,
            port,
            api_key=api_key,
            memory=store,
            names=[model],
            max_queue=max_queue,
            parallel=parallel,
            quiet=quiet,
        )
    except OSError as error:
        raise TTSIError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    try:
        loopback = ipaddress.ip_address(server.server_address[0]).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not api_key:
        click.echo(f"warning: listening on {host} without --api-key: anyone who can reach it can use it", err=True)
    click.echo(
        f"serving {agent.name} at {server.url}" + (f" (adapter memory: {store.directory})" if store else ""), err=True
    )

    def stop(signum, frame):  # SIGTERM (docker stop, systemd) shuts down like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("stopping: finishing the request being answered", err=True)
    finally:
        server.server_close()


@cli.command()
@setting_option("precision", help="The --precision to resolve to a dtype, as ask and serve would.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def doctor(precision, as_json):
    """Show the backend, BLAS, dtype, cache, embedded model and versions this install will use."""
    from . import doctor as checks

    info = checks.report(precision)
    click.echo(json.dumps(info, indent=2) if as_json else checks.text(info))


@cli.command("config-path")
def config_path_command():
    """Print where the config file is read from."""
    from .config import config_path

    click.echo(str(config_path()))


def main(argv=None):
    """Entry point; the config file supplies option defaults for every command."""
    from .config import load_config

    try:
        config = load_config()
    except TTSIError as error:
        click.echo(f"Error: {error}", err=True)
        sys.exit(1)
    cli.main(args=argv, prog_name="mlx-ttsi", default_map={name: config for name in cli.commands})
