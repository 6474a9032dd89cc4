# DSPex.NativePool benchmarks: `mix run bench/run.exs [--quick | --full]` (see Bench.Runner).
#
# The harness lives in bench/support and is compiled here rather than by mix, so that it never
# ships with the library; bench/raw_limit is built by cargo as the run starts.

# The pools log each worker's start at debug level; a benchmark starts hundreds.
Logger.configure(level: :warning)

__DIR__
|> Path.join("support/**/*.ex")
|> Path.wildcard()
|> Kernel.ParallelCompiler.require()

Bench.Runner.main(System.argv())
