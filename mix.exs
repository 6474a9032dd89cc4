defmodule Mix.Tasks.Compile.Cargo do
  @moduledoc """
  Builds the Rust crate in `native/` with cargo and installs it, with the Python bridge, in the
  application's build directory (`_build/ENV/lib/dspex_native_pool/priv`).

  The project has no hex dependencies (rustler_mix included), so this small compiler stands in
  for it. Cargo decides what to rebuild and says where it put the library (so
  `CARGO_TARGET_DIR` and the like are honoured); its progress and errors are shown as they
  come, and a failed build fails the compile: a stale library is never installed.

  Nothing is written into the library's own checkout but cargo's target directory: Mix links a
  dependency's build `priv` to its source `priv`, so that link is replaced by a real directory
  first. The build `priv` also gets `python_env`, a link to the Python environment made by
  `mix dspex_native_pool.setup` (when there is one), which `mix release` copies into the
  release.
  """
  use Mix.Task.Compiler

  @crate "dspex_native_pool"

  @impl true
  def run(_args) do
    cargo =
      System.find_executable("cargo") ||
        Mix.raise(
          "cargo not found on PATH: dspex_native_pool compiles a Rust NIF; install Rust >= 1.91 " <>
            "(https://rustup.rs) and compile again"
        )

    args = ["build", "--release", "-p", @crate, "--message-format=json-render-diagnostics"]

    port =
      Port.open({:spawn_executable, cargo}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        {:line, 1_048_576},
        args: args,
        cd: source_root()
      ])

    {messages, status} = relay(port, [], false)

    if status != 0,
      do: Mix.raise("cargo build failed (exit status #{status}); cargo's own error is above")

    priv = build_priv()
    install_bridge(priv)
    install_library(artifact(Enum.join(messages, "\n")), priv)
    link_python_env(priv)
    {:ok, []}
  end

  @doc """
  Points `priv/python_env` of a build directory at the Python environment `venv` (or removes
  the link when `venv` is nil or has no interpreter). Shared with `mix dspex_native_pool.setup`.
  """
  def link_python_env(priv, venv \\ default_venv()) do
    link = Path.join(priv, "python_env")
    if match?({:ok, _}, File.read_link(link)), do: File.rm!(link)

    if venv && File.exists?(Path.join([venv, "bin", "python"])) &&
         Application.get_env(:dspex_native_pool, :bundle_venv, true) do
      File.ln_s!(venv, link)
    end

    :ok
  end

  # Where `mix dspex_native_pool.setup` puts the environment when not told otherwise:
  # `config :dspex_native_pool, venv: DIR`, else `.venv` in the root of the project being
  # built (the host application's, when this library is a dependency of it).
  def default_venv do
    Path.expand(Application.get_env(:dspex_native_pool, :venv, ".venv"), host_root())
  end

  # A dependency is built with its parent's lock file, so its directory is the host's root.
  defp host_root, do: Path.dirname(Path.expand(Mix.Project.config()[:lockfile]))

  defp source_root, do: Path.dirname(__ENV__.file)

  defp build_priv do
    priv = Path.join(Mix.Project.app_path(), "priv")

    case File.read_link(priv) do
      {:ok, _} -> File.rm!(priv)
      {:error, _} -> :ok
    end

    File.mkdir_p!(priv)
    priv
  end

  # The bridge is kept equal to the source: changed files replaced by a rename (a VM running
  # from this build never sees a file missing or half written), files gone from the source
  # removed.
  defp install_bridge(priv) do
    source = Path.join([source_root(), "priv", "python"])
    target = Path.join(priv, "python")

    files =
      source |> Path.join("**") |> Path.wildcard(match_dot: true) |> Enum.filter(&File.regular?/1)

    wanted = MapSet.new(files, &Path.relative_to(&1, source))

    for relative <- wanted do
      from = Path.join(source, relative)
      to = Path.join(target, relative)

      unless File.exists?(to) and File.read!(from) == File.read!(to) do
        File.mkdir_p!(Path.dirname(to))
        File.cp!(from, to <> ".new")
        File.rename!(to <> ".new", to)
      end
    end

    for file <- Path.wildcard(Path.join(target, "**"), match_dot: true),
        File.regular?(file),
        not MapSet.member?(wanted, Path.relative_to(file, target)),
        do: File.rm!(file)
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

  defp install_library(built, priv) do
    dest = Path.join([priv, "native", "#{@crate}.so"])
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
