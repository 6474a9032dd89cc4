defmodule DSPex.NativePool.DocsTest do
  # The docs' examples run (doctests, against a real pool named `MyPool`), and the README's
  # tables are the ones the code generates.
  use DSPex.NativePool.PoolCase, async: false

  setup_all do
    ExUnit.CaptureLog.capture_log(fn ->
      {:ok, pid} = NativePool.start_link(name: MyPool, pool_size: 2, pin_cpus: false)
      Process.unlink(pid)
      send(self(), {:pool, pid})
    end)

    assert_received {:pool, pid}
    on_exit(fn -> GenServer.stop(pid) end)
  end

  doctest DSPex.NativePool

  @readme File.read!(Path.expand("../../../README.md", __DIR__))

  # Under their headings, not merely somewhere: a table pasted with a line of a command's
  # output above it (a compiler's "Compiling 3 files") would not render as a table.
  test "the README's options table is the one the schema generates, right under its heading" do
    assert @readme =~ "## Options\n\n" <> DSPex.NativePool.Options.table()
  end

  test "the README's error table is the one DSPex.NativePool.Error documents" do
    assert @readme =~
             "names the `:pool`, the `:command` and the `:worker_id` where known.\n\n" <>
               DSPex.NativePool.Error.table()
  end

  test "the README's Layout table names every library file, and only paths that exist" do
    [_, layout] = String.split(@readme, "## Layout", parts: 2)
    root = Path.expand("../../..", __DIR__)

    # The paths in the first column of each row.
    named =
      for "| " <> row <- String.split(layout, "\n"),
          [path_cell | _] = String.split(row, " | "),
          [path] <- Regex.scan(~r/`([^`]+)`/, path_cell, capture: :all_but_first),
          do: String.trim_trailing(path, "/")

    for path <- named, do: assert(File.exists?(Path.join(root, path)), "#{path} does not exist")

    for file <- Path.wildcard(Path.join(root, "lib/**/*.ex")) do
      relative = Path.relative_to(file, root)

      assert Enum.any?(named, &(relative == &1 or String.starts_with?(relative, &1 <> "/"))),
             "#{relative} is not in the README's Layout table"
    end
  end
end
