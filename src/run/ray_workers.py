# Workers 1..N-1 of a data-parallel ptl stage on a Ray cluster (src/run/ray_workers.rs starts this
# inside the stage's Ray job, where worker 0 runs). It places one bundle per worker in a placement
# group, starts `ptl worker SPEC` in an actor on each bundle's node, and relays their output as
# JSON lines on stdout:
#   {"node": ID, "ip": IP}                       this driver's node (worker 0's), first
#   {"rank": R, "node": ID, "ip": IP}            where worker R was placed
#   {"rank": R, "out": LINE} / {"rank": R, "err": LINE}
#   {"rank": R, "exit": CODE} / {"rank": R, "signal": N} / {"rank": R, "lost": WHY}
#   {"error": WHY}                               the group could not be placed (then exit 3)
# A "stop" line on stdin is passed to every worker; stdin closing (ptl is gone) stops them too.
# When this driver dies, Ray ends its actors, and each worker process dies with its actor.
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy


def say(record):
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def die_with_parent():
    # PR_SET_PDEATHSIG: the worker gets SIGKILL when the actor process that started it dies.
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except OSError:
        pass


@ray.remote
class Worker:
    def where(self):
        return ray.get_runtime_context().get_node_id()

    def start(self, argv, env, spec, stage):
        fd, path = tempfile.mkstemp(prefix=f"ptl-worker-{stage}-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            f.write(spec)
        self.lines = queue.Queue()
        self.process = subprocess.Popen(
            argv + [path],
            env={**os.environ, **env},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            preexec_fn=die_with_parent,
        )
        self.readers = [
            threading.Thread(target=self.read, args=(self.process.stdout, "out"), daemon=True),
            threading.Thread(target=self.read, args=(self.process.stderr, "err"), daemon=True),
        ]
        for r in self.readers:
            r.start()

    def read(self, pipe, kind):
        for line in pipe:
            self.lines.put((kind, line.rstrip("\n")))

    def take(self):
        """The lines that arrived (waiting up to 0.2 s for one), and the exit status once the
        process has ended and every line was taken."""
        out = []
        try:
            out.append(self.lines.get(timeout=0.2))
            while True:
                out.append(self.lines.get_nowait())
        except queue.Empty:
            pass
        status = None
        if self.process.poll() is not None and all(not r.is_alive() for r in self.readers):
            if self.lines.empty():
                status = self.process.returncode
        return out, status

    def stop(self):
        try:
            self.process.stdin.write("stop\n")
            self.process.stdin.flush()
        except (OSError, ValueError):
            pass


def main():
    config = json.load(open(sys.argv[1]))
    ray.init(address="auto", logging_level="ERROR", log_to_driver=False)

    def address(node):
        # The address Ray itself reaches the node at (its --node-ip-address).
        for n in ray.nodes():
            if n["NodeID"] == node:
                return n["NodeManagerAddress"]
        return ray.util.get_node_ip_address()

    here = ray.get_runtime_context().get_node_id()
    master = address(here)
    say({"node": here, "ip": master})
    ranks = config["ranks"]
    bundle = {}
    if config["cpus"] > 0:
        bundle["CPU"] = config["cpus"]
    if config["gpus"] > 0:
        bundle["GPU"] = config["gpus"]
    group = placement_group([dict(bundle) for _ in ranks], strategy="PACK")
    try:
        ray.get(group.ready(), timeout=config["timeout"])
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(group)
        workers = f"worker {ranks[0]}" if len(ranks) == 1 else f"workers {ranks[0]}..{ranks[-1]}"
        say({"error": f"the Ray cluster did not place {workers} within {config['timeout']} s "
                      f"(pending_timeout): no room on its nodes for a placement group of "
                      f"{len(ranks)} bundle(s) of num_cpus = {config['cpus']:g}, "
                      f"num_gpus = {config['gpus']:g} besides the job's own"})
        sys.exit(3)
    actors = {}
    for i, rank in enumerate(ranks):
        strategy = PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=i)
        actors[rank] = Worker.options(
            num_cpus=config["cpus"], num_gpus=config["gpus"], scheduling_strategy=strategy
        ).remote()
    for rank, actor in actors.items():
        node = ray.get(actor.where.remote())
        say({"rank": rank, "node": node, "ip": address(node)})
        env = dict(config["env"], RANK=str(rank), LOCAL_RANK="0", MASTER_ADDR=master)
        ray.get(actor.start.remote(config["argv"], env, config["spec"], config["stage"]))

    def stop_all():
        for line in sys.stdin:
            if line.strip() == "stop":
                break
        for actor in actors.values():
            actor.stop.remote()

    threading.Thread(target=stop_all, daemon=True).start()
    pending = {actor.take.remote(): rank for rank, actor in actors.items()}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            rank = pending.pop(ref)
            try:
                lines, status = ray.get(ref)
            except ray.exceptions.RayError as e:
                say({"rank": rank, "lost": str(e).splitlines()[0] if str(e) else repr(e)})
                continue
            for kind, line in lines:
                say({"rank": rank, kind: line})
            if status is None:
                pending[actors[rank].take.remote()] = rank
            elif status < 0:
                say({"rank": rank, "signal": -status})
            else:
                say({"rank": rank, "exit": status})
    remove_placement_group(group)


if __name__ == "__main__":
    main()
