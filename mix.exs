defmodule Mix.Tasks.Compile.Cargo do
  @moduledoc """
  Builds the Rust crate in `native/` with cargo and installs it as `priv/native/*.so`.

  The project has no hex dependencies (rustler_mix included), so this small compiler stands in
  for it. Cargo decides what to rebuild and says where it put the library (so
  `CARGO_TARGET_DIR` and the like are honoured); its progress and errors are shown as they
  come, and a failed build fails the compile: a stale library is never installed.
  """
  use Mix.Task.Compiler

  @crate "dspex_native_pool"

  @impl true
  def run(_args) do
    cargo = System.find_executable("cargo") || Mix.raise("cargo not found on PATH: run bin/setup")
    args = ["build", "--release", "-p", @crate, "--message-format=json-render-diagnostics"]

    port =
      Port.open({:spawn_executable, cargo}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        {:line, 1_048_576},
        args: args,
        cd: Path.dirname(__ENV__.file)
      ])

    {messages, status} = relay(port, [], false)

    if status != 0,
      do: Mix.raise("cargo build failed (exit status #{status}); cargo's own error is above")

    install(artifact(Enum.join(messages, "\n")))
    {:ok, []}
  end

  # Cargo's JSON messages are kept; its own lines (progress, warnings, errors) are shown as they
  # come, but for the closing "Finished" of a build that had nothing to compile.
  defp relay(port, messages, compiled?) do
    receive do
      {^port, {:data, {:eol, "{" <> _ = json}}} ->
        relay(port, [json | messages], compiled?)

      {^port, {:data, {_, line}}} ->
        quiet? = not compiled? and line =~ ~r/^\s*Finished /
        unless quiet?, do: IO.puts(:stderr, line)
        relay(port, messages, compiled? or line =~ ~r/^\s*Compiling /)

      {^port, {:exit_status, status}} ->
        {Enum.reverse(messages), status}
    end
  end

  # The library file of our crate, from cargo's `compiler-artifact` message.
  defp artifact(messages) do
    messages
    |> String.split("\n")
    |> Enum.filter(&(&1 =~ ~s("reason":"compiler-artifact") and &1 =~ ~s("name":"#{@crate}")))
    |> Enum.flat_map(fn line ->
      case Regex.run(~r/"filenames":\[([^\]]*)\]/, line, capture: :all_but_first) do
        [list] -> Regex.scan(~r/"((?:[^"\\]|\\.)*)"/, list, capture: :all_but_first)
        nil -> []
      end
    end)
    |> List.flatten()
    |> Enum.map(&String.replace(&1, ~r/\\(.)/, "\\1"))
    |> Enum.find(&String.ends_with?(&1, ".so")) ||
      Mix.raise("cargo built #{@crate} but did not say where the library is")
  end

  defp install(built) do
    dest = Path.join([Path.dirname(__ENV__.file), "priv", "native", "#{@crate}.so"])
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
