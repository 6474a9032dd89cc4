defmodule Mix.Tasks.Compile.Cargo do
  @moduledoc """
  Builds the Rust crate in `native/` with cargo and installs it as `priv/native/*.so`.

  The project has no hex dependencies (rustler_mix included), so this small compiler stands in
  for it. Cargo decides what to rebuild; the library is copied only when it changed.
  """
  use Mix.Task.Compiler

  @crate "dspex_native_pool"

  @impl true
  def run(_args) do
    cargo = System.find_executable("cargo") || Mix.raise("cargo not found on PATH: run bin/setup")

    {_, status} =
      System.cmd(cargo, ["build", "--release", "--quiet", "-p", @crate],
        cd: File.cwd!(),
        into: IO.stream(:stdio, :line),
        stderr_to_stdout: true
      )

    if status != 0, do: Mix.raise("cargo build failed (exit status #{status})")
    install()
    {:ok, []}
  end

  defp install do
    built = Path.join(["target", "release", "lib#{@crate}.so"])
    dest = Path.join(["priv", "native", "#{@crate}.so"])
    File.mkdir_p!(Path.dirname(dest))

    unless File.exists?(dest) and File.read!(built) == File.read!(dest) do
      # Remove first: a VM that has the old file mapped may crash if it is overwritten in place.
      File.rm(dest)
      File.cp!(built, dest)
    end
  end
end

defmodule DSPex.NativePool.MixProject do
  use Mix.Project

  def project do
    [
      app: :dspex_native_pool,
      version: "0.1.0",
      elixir: "~> 1.14",
      compilers: [:cargo | Mix.compilers()],
      start_permanent: Mix.env() == :prod,
      deps: [],
      elixirc_paths: elixirc_paths(Mix.env())
    ]
  end

  def application do
    [extra_applications: [:logger], mod: {DSPex.NativePool.Application, []}]
  end

  defp elixirc_paths(:test), do: ["lib", "test/support"]
  defp elixirc_paths(_), do: ["lib"]
end
