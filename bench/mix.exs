defmodule DSPexNativePoolBench.MixProject do
  # The benchmarks, a project of their own that uses the library as an application would (a
  # path dependency), so that nothing of theirs ships with it. Run from this directory:
  # `mix run run.exs` (see README.md).
  use Mix.Project

  def project do
    [
      app: :dspex_native_pool_bench,
      version: "0.1.0",
      elixir: "~> 1.14",
      elixirc_paths: ["support"],
      deps: [{:dspex_native_pool, path: ".."}]
    ]
  end

  def application, do: [extra_applications: [:logger, :runtime_tools]]
end
