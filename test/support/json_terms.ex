defmodule DSPex.NativePool.JSONTerms do
  @moduledoc false
  # A generator of random JSON-able terms, and a round trip of them through `echo` on real
  # workers: what is sent must come back equal. Reproducible from its seed. Run in a child VM
  # (see `DSPex.NativePool.ChildVM`): a term that crashed the VM must fail a test, not end
  # the run.

  alias DSPex.NativePool

  @ints [
    0,
    1,
    -1,
    42,
    2 ** 31,
    -(2 ** 31),
    2 ** 53 + 1,
    2 ** 63 - 1,
    -(2 ** 63),
    2 ** 63,
    2 ** 64 - 1
  ]
  @floats [
    0.0,
    -1.5,
    1.0e-300,
    5.0e-324,
    2.2250738585072014e-308,
    1.7976931348623157e308,
    -1.7976931348623157e308,
    0.1,
    1.0e16,
    123_456.789
  ]
  @texts [
    "",
    "a",
    "\"",
    "\\",
    "\\\"",
    "\n\r\t\b\f",
    <<0>>,
    <<31>>,
    "</script>",
    "é",
    "日本語",
    "🐍👩‍💻",
    "\u2028\u2029",
    "\uFFFF",
    "a\u0000b",
    "{\"id\":1}",
    String.duplicate("x", 5_000)
  ]

  @doc "Deepest nesting the encoder accepts, counting the args map and the innermost value."
  def max_depth, do: 128

  @doc """
  Sends `count` terms through `echo` (fixed edge cases first, then random ones from `seed`).
  Returns `{:passed, n}` or `{:mismatch, case_number, description}`.
  """
  def round_trip(seed, count) do
    :rand.seed(:exsss, {seed, seed * 7 + 1, seed * 13 + 2})
    pool = :"round_trip_#{seed}"
    {:ok, _} = NativePool.start_link(name: pool, pool_size: 2, max_frame: 256 * 1024 * 1024)
    cases = edge_cases() ++ Enum.map(1..max(count - length(edge_cases()), 0), fn _ -> args() end)

    cases
    |> Enum.with_index(1)
    |> Enum.reduce_while({:passed, 0}, fn {args, i}, {:passed, n} ->
      case NativePool.execute("echo", args, pool: pool, timeout: 120_000) do
        {:ok, reply} ->
          if reply === expected(args),
            do: {:cont, {:passed, n + 1}},
            else: {:halt, {:mismatch, i, diff(expected(args), reply, "args")}}

        other ->
          {:halt, {:mismatch, i, "#{inspect(other, limit: 20)} for #{inspect(args, limit: 20)}"}}
      end
    end)
  end

  @doc "Where two terms first differ, as `path: expected vs got`."
  def diff(a, b, path) when is_map(a) and is_map(b) do
    if Map.keys(a) |> Enum.sort() != Map.keys(b) |> Enum.sort() do
      "#{path}: keys #{inspect(Map.keys(a) -- Map.keys(b))} sent, #{inspect(Map.keys(b) -- Map.keys(a))} came back"
    else
      Enum.find_value(a, fn {k, v} -> a_diff(v, b[k], "#{path}.#{inspect(k)}") end)
    end
  end

  def diff(a, b, path) when is_list(a) and is_list(b) and length(a) == length(b) do
    a
    |> Enum.zip(b)
    |> Enum.with_index()
    |> Enum.find_value(fn {{x, y}, i} -> a_diff(x, y, "#{path}[#{i}]") end)
  end

  def diff(a, b, path), do: "#{path}: sent #{inspect(a)}, got #{inspect(b)}"

  defp a_diff(a, b, path), do: if(a === b, do: nil, else: diff(a, b, path))

  @doc "The fixed cases: large maps, nested and in lists, the deepest nesting, extremes."
  def edge_cases do
    [
      %{},
      big_map(129),
      big_map(1_000),
      big_map(100_000),
      %{"nested" => big_map(129), "list" => [big_map(200), big_map(33)]},
      %{"maps" => Enum.map(1..20, &big_map(100 + &1))},
      nested(max_depth() - 2),
      %{"ints" => @ints, "floats" => @floats, "texts" => @texts},
      %{"empty" => [%{}, [], "", [[]], [%{"" => %{}}]]},
      %{"atoms" => [:ok, nil, true, false, :"with space"], nil: 1}
    ]
  end

  defp big_map(n), do: Map.new(1..n, &{"k#{&1}", &1})

  @doc "An args map with `levels` nested lists around an integer."
  def nested(levels), do: %{"deep" => Enum.reduce(1..levels, 1, fn _, acc -> [acc] end)}

  @doc "What `echo` returns for `term`: string keys, atoms (but nil and booleans) as strings."
  def expected(map) when is_map(map), do: Map.new(map, fn {k, v} -> {key(k), expected(v)} end)

  def expected(list) when is_list(list), do: Enum.map(list, &expected/1)
  def expected(value) when value in [nil, true, false], do: value
  def expected(atom) when is_atom(atom), do: Atom.to_string(atom)
  def expected(other), do: other

  defp key(atom) when is_atom(atom), do: Atom.to_string(atom)
  defp key(string), do: string

  @doc "A random args map of about `budget` values at most."
  def args(budget \\ 2_000), do: map(budget)

  defp value(budget) when budget < 2, do: scalar()

  defp value(budget) do
    case :rand.uniform(10) do
      n when n <= 6 -> scalar()
      n when n <= 8 -> list(budget)
      _ -> map(budget)
    end
  end

  defp scalar do
    case :rand.uniform(8) do
      1 -> Enum.random([nil, true, false])
      2 -> Enum.random(@ints)
      3 -> :rand.uniform(2 ** 62) - 2 ** 61
      4 -> Enum.random(@floats)
      5 -> (:rand.uniform() - 0.5) * :math.pow(10, :rand.uniform(600) - 300)
      6 -> Enum.random(@texts)
      7 -> text()
      8 -> Enum.random([:atom, :ünïcode, :"a b"])
    end
  end

  defp text do
    Enum.map_join(1..:rand.uniform(20), fn _ ->
      case :rand.uniform(6) do
        1 -> <<:rand.uniform(32) - 1>>
        2 -> Enum.random(["\"", "\\", "/", "é", "€", "𝄞", "\u2028"])
        3 -> <<Enum.random(0x4E00..0x9FFF)::utf8>>
        4 -> <<Enum.random(0x1F300..0x1FAFF)::utf8>>
        _ -> <<Enum.random(?a..?z)>>
      end
    end)
  end

  # Each container shares its budget among its children, so a term stays small.
  defp list(budget) do
    size = min(:rand.uniform(8) - 1, budget)
    Enum.map(1..size//1, fn _ -> value(div(budget, size + 1)) end)
  end

  defp map(budget) do
    size = min(Enum.random([0, 1, 2, 5, 10, 40, 140]), budget)
    Map.new(1..size//1, fn i -> {"#{text()}#{i}", value(div(budget, size + 1))} end)
  end
end
