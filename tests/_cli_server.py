"""The process `_cli.run_cli` forks command-line runs from (started by it; not a test).

It imports what every command imports (torch, DCP, transformers' LLaMA classes, megatron-core, our package) once,
starts no thread, then serves one run at a time: a JSON request line on stdin ({argv, cwd, env, stdout, stderr,
timeout}) -> fork -> the child runs `python ARGV...` as the interpreter would (sys.argv, sys.path[0], `__main__`,
exit code, atexit handlers) in the given environment, with its stdout/stderr in the given files and stdin from
/dev/null -> a JSON reply line ({returncode}) on stdout. A run that outlives its timeout is killed (returncode -9,
like subprocess's).
"""
import atexit
import importlib
import json
import os
import runpy
import signal
import sys
import time
import traceback
import warnings


PRELOAD = ["torch", "torch.distributed.checkpoint", "transformers", "transformers.models.llama.modeling_llama",
           "megatron.core.parallel_state", "megatron_moe.cli", "megatron_moe.training",
           "megatron_moe.construct.convert", "megatron_moe.formats", "megatron_moe.data", "megatron_moe.export"]


def _exit_code(exc: SystemExit) -> int:
    """The interpreter's rule: None -> 0, an int -> itself, anything else printed to stderr -> 1."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def _child(req: dict) -> None:
    code = 1
    try:
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, req["stdout"], os.O_WRONLY | os.O_TRUNC),
                                (2, req["stderr"], os.O_WRONLY | os.O_TRUNC)):
            os.dup2(os.open(path, flags), fd)
        argv = req["argv"]
        try:
            if argv[0] == "-m":
                sys.argv = [argv[1], *argv[2:]]  # run_module puts the module's file in argv[0]
                sys.path[0] = os.getcwd()
                runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
            else:
                sys.argv = list(argv)
                sys.path[0] = os.path.dirname(os.path.realpath(argv[0]))
                runpy.run_path(argv[0], run_name="__main__")
            code = 0
        except SystemExit as exc:
            code = _exit_code(exc)
        except BaseException:  # the interpreter prints the traceback and exits 1
            traceback.print_exc()
            code = 1
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _wait(pid: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return -signal.SIGKILL
        time.sleep(0.005)


def main() -> None:
    with warnings.catch_warnings():  # import-time notices (no Transformer Engine) belong to no run
        warnings.simplefilter("ignore")
        for name in PRELOAD:
            importlib.import_module(name)
    reply = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # nothing but replies on the reply channel
    reply.write(json.dumps({"ready": True}) + "\n")
    reply.flush()
    for line in sys.stdin:
        req = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(req)
        reply.write(json.dumps({"returncode": _wait(pid, req["timeout"])}) + "\n")
        reply.flush()


if __name__ == "__main__":
    main()
