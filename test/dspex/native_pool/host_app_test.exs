defmodule DSPex.NativePool.HostAppTest do
  # The library as a new user meets it: a throwaway application depends on a copy of this
  # source tree by path, runs `mix dspex_native_pool.setup`, pings a pool with `mix run`,
  # builds a release, copies it elsewhere, hides both source trees, and runs `ping` and a DSPy
  # Predict against the local LM server from the copy.
  #
  # It takes a few minutes (pip installs DSPy into the application's own environment, cargo
  # rebuilds the crate from the copied tree): `mix test --exclude host_app` skips it.
  use ExUnit.Case, async: true

  alias DSPex.NativePool.LMServer

  @moduletag :host_app
  @moduletag timeout: 1_200_000

  @root Path.expand("../../..", __DIR__)

  @application ~S'''
  defmodule HostApp.Application do
    use Application

    @impl true
    def start(_type, _args) do
      children = [{DSPex.NativePool, name: HostApp.LLM, pool_size: 1}]
      Supervisor.start_link(children, strategy: :one_for_one, name: HostApp.Supervisor)
    end
  end
  '''

  # Run by the release's `eval`: ping, then a Predict through DSPy's own HTTP client.
  @check ~S'''
  {:ok, _} = Application.ensure_all_started(:host_app)
  IO.puts("PING " <> inspect(DSPex.NativePool.execute("ping", %{}, pool: HostApp.LLM)))

  lm = %{model: "openai/test-model", api_base: System.fetch_env!("LM_API_BASE"),
         api_key: "test-key", cache: false}
  {:ok, _} = DSPex.NativePool.configure_lm(lm, pool: HostApp.LLM)

  {:ok, %{"program_id" => id}} =
    DSPex.NativePool.execute("create_program", %{signature: "question -> answer"},
      pool: HostApp.LLM)

  result =
    DSPex.NativePool.execute("execute_program", %{program_id: id, inputs: %{question: "6*7?"}},
      pool: HostApp.LLM)

  IO.puts("PREDICT " <> inspect(result))
  IO.puts("PRIV " <> List.to_string(:code.priv_dir(:dspex_native_pool)))
  '''

  setup do
    dir = Path.join(System.tmp_dir!(), "dspex_host_app_#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf!(dir) end)
    %{dir: dir}
  end

  test "a path dependency: setup task, mix run, and a copied release with the sources hidden",
       %{dir: dir} do
    library = copy_library(Path.join(dir, "dspex_native_pool"))
    app = Path.join(dir, "host_app")
    run!(dir, "mix", ["new", "host_app", "--sup", "--module", "HostApp"])
    depend_on(app, library)

    run!(app, "mix", ["deps.get"])
    setup = run!(app, "mix", ["dspex_native_pool.setup"])
    assert setup =~ "Python virtualenv: #{Path.join(app, ".venv")}"
    assert setup =~ ~r/python 3\.\d+\.\d+ dspy \d/
    assert setup =~ "Ready: workers will run"

    ping = ~s|IO.inspect DSPex.NativePool.execute("ping", %{}, pool: HostApp.LLM)|
    assert run!(app, "mix", ["run", "-e", ping]) =~ ~s|"status" => "ok"|
    assert run!(app, "mix", ["dspex_native_pool.setup"]) =~ "up to date"

    run!(app, "mix", ["release"], [{"MIX_ENV", "prod"}])

    # Only cargo's target dir may be written in the library's tree; the bridge's tests stay
    # out of the release.
    refute File.exists?(Path.join(library, "priv/native"))
    refute File.exists?(Path.join(library, "_build"))
    release = Path.join(dir, "release_copy")
    run!(dir, "cp", ["-a", Path.join(app, "_build/prod/rel/host_app"), release])
    File.rename!(app, app <> ".hidden")
    File.rename!(library, library <> ".hidden")

    [priv] = Path.wildcard(Path.join(release, "lib/dspex_native_pool-*/priv"))
    assert File.regular?(Path.join(priv, "native/dspex_native_pool.so"))
    assert File.regular?(Path.join(priv, "python/dspex_worker.py"))
    assert File.exists?(Path.join(priv, "python_env/bin/python"))
    refute File.exists?(Path.join(priv, "python/tests"))

    server = LMServer.start!(answer: "42")
    script = Path.join(dir, "check.exs")
    File.write!(script, @check)

    output =
      run!(
        release,
        Path.join(release, "bin/host_app"),
        ["eval", "Code.eval_file(#{inspect(script)})"],
        [
          {"LM_API_BASE", server.api_base}
        ]
      )

    assert output =~ ~r/PING \{:ok, %\{.*"status" => "ok"/
    assert output =~ ~r/PREDICT \{:ok, %\{.*"answer" => "42"/s
    assert output =~ "PRIV #{priv}"
    assert output =~ "the environment bundled in the release at #{Path.join(priv, "python_env")}"
    refute output =~ dir <> "/host_app/"
  end

  # The tracked and untracked-but-not-ignored files of this tree: what a clone would hold.
  defp copy_library(target) do
    {files, 0} =
      System.cmd("git", ["ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cd: @root
      )

    for file <- String.split(files, <<0>>, trim: true),
        source = Path.join(@root, file),
        File.regular?(source) do
      destination = Path.join(target, file)
      File.mkdir_p!(Path.dirname(destination))
      File.cp!(source, destination)
      File.chmod!(destination, File.stat!(source).mode)
    end

    target
  end

  defp depend_on(app, library) do
    mix_exs = Path.join(app, "mix.exs")

    source =
      mix_exs
      |> File.read!()
      |> String.replace(
        ~r/defp deps do\n\s*\[.*?\n\s*\]/s,
        "defp deps do\n    [{:dspex_native_pool, path: #{inspect(library)}}]"
      )

    File.write!(mix_exs, source)
    File.write!(Path.join(app, "lib/host_app/application.ex"), @application)
  end

  # Each step bounded by `timeout`; its output is the failure message.
  defp run!(dir, command, args, env \\ []) do
    env =
      [
        {"MIX_ENV", "dev"},
        {"DSPEX_PYTHON", nil},
        # The crate's dependencies are already built there; the copy rebuilds only our crates.
        {"CARGO_TARGET_DIR", Path.join(@root, "target")}
      ] ++ env

    {output, status} =
      System.cmd("timeout", ["600", command | args],
        cd: dir,
        env: env,
        stderr_to_stdout: true
      )

    assert status == 0, "#{command} #{Enum.join(args, " ")} exited with #{status}:\n#{output}"
    output
  end
end
