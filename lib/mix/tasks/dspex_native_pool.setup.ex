defmodule Mix.Tasks.DspexNativePool.Setup do
  @shortdoc "Creates the Python environment, with DSPy, that the pool's workers run in"

  @moduledoc """
  Creates a Python virtualenv for `DSPex.NativePool`'s workers, installs the bridge's pinned
  requirements (DSPy among them) and the application's own, and checks that `import dspy`
  works. Run it in the application that uses the pool:

      mix dspex_native_pool.setup
      mix dspex_native_pool.setup --requirements python/requirements.txt
      mix dspex_native_pool.setup --path /opt/my_app/venv --python python3.11

  Options:

    * `--path DIR` - where the virtualenv goes (default: `.venv` in the application's root,
      or `config :dspex_native_pool, venv: DIR`);
    * `--requirements FILE` - the application's own requirements, installed too (or
      `config :dspex_native_pool, requirements: FILE`);
    * `--python EXE` - the interpreter the virtualenv is made from (default `python3`).

  Running it again is fast: requirements whose contents did not change since the last run are
  not reinstalled. Pools find the environment by themselves, and `mix release` copies it into
  the release (see "Install in your application" in `DSPex.NativePool`'s docs for the order in
  which an interpreter is chosen, and for releases). Use `config :dspex_native_pool, venv: DIR`
  rather than `--path` for a place of your own: the library's builds link to the configured
  place, `--path` links only the builds that exist when the task runs.
  """

  use Mix.Task

  @marker DSPex.NativePool.PythonEnv.marker()

  @impl true
  def run(argv) do
    {opts, _rest} =
      OptionParser.parse!(argv, strict: [path: :string, requirements: :string, python: :string])

    path = Path.expand(opts[:path] || config(:venv) || ".venv")
    python = opts[:python] || "python3"
    app_requirements = opts[:requirements] || config(:requirements)
    own = if app_requirements, do: [Path.expand(app_requirements)], else: []
    requirements = [bridge_requirements() | own]

    step("Python virtualenv: #{path}")
    ensure_venv(path, python)
    step("Requirements: #{Enum.join(requirements, ", ")}")
    install(path, requirements)
    step("Checking that DSPy imports")
    check_dspy(path)
    step("Linking the library's builds to it (priv/python_env)")
    link_builds(path)
    Mix.shell().info("\nReady: workers will run #{venv_python(path)}")
  end

  # Every build of the library made so far (one per MIX_ENV) gets `priv/python_env`, the link
  # pools resolve and `mix release` copies; builds made later get it from the library's
  # compiler, which looks in the same default place (`config :dspex_native_pool, venv: DIR`,
  # else `.venv`). A build whose `priv` is still Mix's link into the library's checkout is left
  # alone: nothing is written into the checkout.
  defp link_builds(path) do
    builds =
      Mix.Project.build_path()
      |> Path.dirname()
      |> Path.join("*/lib/dspex_native_pool/priv")
      |> Path.wildcard()
      |> Enum.filter(&match?({:error, _}, File.read_link(&1)))

    for priv <- builds do
      link = Path.join(priv, "python_env")
      if match?({:ok, _}, File.read_link(link)), do: File.rm!(link)
      File.ln_s!(path, link)
      Mix.shell().info("    #{link}")
    end

    if builds == [], do: Mix.shell().info("    no build yet: mix compile will link it")
  end

  defp config(key), do: Application.get_env(:dspex_native_pool, key)

  defp bridge_requirements do
    Application.app_dir(:dspex_native_pool, "priv/python/requirements.txt")
  rescue
    ArgumentError -> Path.expand("../../../priv/python/requirements.txt", __DIR__)
  end

  defp step(text), do: Mix.shell().info("==> " <> text)

  defp venv_python(path), do: Path.join([path, "bin", "python"])

  defp ensure_venv(path, python) do
    if File.exists?(venv_python(path)) do
      Mix.shell().info("    exists")
    else
      exe =
        System.find_executable(python) ||
          Mix.raise("#{python} was not found: install Python >= 3.10, or pass --python")

      run!(exe, ["-m", "venv", path], "creating the virtualenv")
    end

    drop_lib64_link(path)
  end

  # `lib64` is a link to `lib` where the interpreter does not use it; `mix release` copies what
  # links point to, so it would carry site-packages twice.
  defp drop_lib64_link(path) do
    lib64 = Path.join(path, "lib64")
    platlib = run!(venv_python(path), ["-c", "import sys; print(sys.platlibdir)"], "probing")

    if String.trim(platlib) == "lib" and File.read_link(lib64) == {:ok, "lib"},
      do: File.rm!(lib64)
  end

  defp install(path, requirements) do
    Enum.each(requirements, fn file ->
      File.exists?(file) || Mix.raise("requirements file not found: #{file}")
    end)

    digest =
      requirements
      |> Enum.map(&File.read!/1)
      |> :erlang.md5()
      |> Base.encode16()

    marker = Path.join(path, @marker)

    if File.read(marker) == {:ok, digest} do
      Mix.shell().info("    up to date")
    else
      args = ["-m", "pip", "install", "--disable-pip-version-check", "--quiet"]
      args = args ++ Enum.flat_map(requirements, &["-r", &1])
      run!(venv_python(path), args, "installing the requirements")
      File.write!(marker, digest)
    end
  end

  defp check_dspy(path) do
    code = "import sys, dspy; print('python', sys.version.split()[0], 'dspy', dspy.__version__)"
    output = run!(venv_python(path), ["-c", code], "importing DSPy")
    Mix.shell().info("    " <> String.trim(output))
  end

  # Runs a command; on failure shows its whole output and stops.
  defp run!(exe, args, what) do
    case System.cmd(exe, args, stderr_to_stdout: true) do
      {output, 0} ->
        output

      {output, status} ->
        Mix.shell().error(output)
        Mix.raise("#{what} failed (#{Path.basename(exe)} exited with status #{status})")
    end
  end
end
