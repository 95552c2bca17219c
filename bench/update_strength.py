"""Does the LoRA reproduce what it was trained on? TT-SI answers against the self-label, per schedule.

    python bench/update_strength.py [--schedules 3x1e-3,5x1e-3,3x3e-3] [--rows 3,17,24] [--stop-losses 0,0.02]
                                    [--batch-sizes 1,3] [--said-back 1,0]

For the README's example request and a few SealTool requests, every request is adapted (mode ttsi,
forced) with each schedule (epochs x learning rate) and the answer is compared with the self-label
the LoRA was trained on (the request itself is one of its K examples). A schedule that cannot make
the model say its own label back teaches it nothing. `--stop-losses` runs each schedule with each
early stop (0: every epoch runs), to see what stopping once the examples are fitted costs;
`--batch-sizes` with each batch size (3 = the K examples in one padded step per epoch), `--said-back`
with the stop once the LoRA says back every example (1) and without it (0).
"""

import argparse
import json
import time

from mlx_ttsi.agent import Agent
from mlx_ttsi.settings import LoRASettings

from _common import ROOT, machine, sealtool_rows

EXAMPLE = "Will it rain in Lisbon tomorrow? Give me the temperature in celsius."


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedules", default="3x1e-3,5x1e-3,3x3e-3,5x1e-4")
    parser.add_argument("--rows", default="3,17,24", help="SealTool row indices")
    parser.add_argument("--stop-losses", default="0", help="early stops to try per schedule (0: none)")
    parser.add_argument("--batch-sizes", default="1", help="examples per training step to try per schedule")
    parser.add_argument("--said-back", default="1", help="stop once every example is said back: 1, 0 or 1,0")
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()

    rows = sealtool_rows()
    requests = [(EXAMPLE, json.loads((ROOT / "mlx_ttsi" / "examples" / "tools.json").read_text()))]
    requests += [(rows[int(i)]["query"], rows[int(i)]["tools"]) for i in args.rows.split(",")]
    agent = Agent.load(args.model)
    print(f"machine: {machine()}")
    print(
        f"{'schedule':<10} {'batch':>5} {'stop':>5} {'said':>4} {'reproduced':>10} {'mean loss':>9} {'steps':>5} {'train s':>7} {'s/request':>9}"
    )
    for schedule in args.schedules.split(","):
        epochs, lr = schedule.split("x")
        for batch, stop, said in [
            (int(b), s, d == "1")
            for b in args.batch_sizes.split(",")
            for s in args.stop_losses.split(",")
            for d in args.said_back.split(",")
        ]:
            lora = LoRASettings(
                epochs=int(epochs),
                learning_rate=float(lr),
                stop_loss=float(stop),
                batch_size=batch,
                stop_said_back=said,
            )
            same, losses, steps, train, started = 0, [], [], [], time.perf_counter()
            for request, tools in requests:
                answer = agent.ask(request, tools=tools, mode="ttsi", force=True, lora=lora)
                same += answer.tool_calls == answer.label
                losses.append(answer.training["loss"])
                steps.append(answer.training["steps"])
                train.append(answer.timings["training"])
            seconds = (time.perf_counter() - started) / len(requests)
            n = len(requests)
            print(
                f"{schedule:<10} {batch:>5} {float(stop):>5} {'yes' if said else 'no':>4} {same:>4} of {n:<3} {sum(losses) / n:9.3f} {sum(steps) / n:5.1f} "
                f"{sum(train) / n:7.2f} {seconds:9.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
