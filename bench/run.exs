# DSPex.NativePool benchmarks: `mix run run.exs [--quick | --full]` in bench/ (see Bench.Runner).
#
# bench/ is a Mix project of its own that depends on the library by path, so nothing of the
# harness ships with the library; bench/raw_limit is built by cargo as the run starts. Run
# from the repository's root (`mix run bench/run.exs ...`), this script runs itself in bench/.

if Code.ensure_loaded?(Bench.Runner) do
  # The pools log each worker's start at debug level; a benchmark starts hundreds.
  Logger.configure(level: :warning)
  Bench.Runner.main(System.argv())
else
  {_, status} =
    System.cmd("mix", ["run", "run.exs" | System.argv()],
      cd: __DIR__,
      into: IO.stream(:stdio, :line),
      stderr_to_stdout: true
    )

  System.halt(status)
end
