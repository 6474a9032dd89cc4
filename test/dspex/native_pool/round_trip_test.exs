defmodule DSPex.NativePool.RoundTripTest do
  # What is sent comes back equal, for random terms and for the shapes that once crashed the
  # VM (maps of more than 128 keys built on the worker's thread). Run in child VMs: a crash
  # there is a failed test naming the signal.
  use DSPex.NativePool.PoolCase, async: true

  alias DSPex.NativePool.{ChildVM, JSONTerms}

  @moduletag timeout: 300_000

  test "random JSON-able terms come back from echo unchanged (seeded, printed)" do
    seed =
      case System.get_env("ROUND_TRIP_SEED") do
        nil -> :rand.uniform(1_000_000)
        seed -> String.to_integer(seed)
      end

    IO.puts("round-trip property: seed #{seed} (ROUND_TRIP_SEED=#{seed} mix test to replay)")
    cases = 300

    assert {:ok, {:passed, ^cases}} =
             ChildVM.eval("DSPex.NativePool.JSONTerms.round_trip(#{seed}, #{cases})")
  end

  test "a handler's replies with maps of 129, 1,000 and 100,000 keys, nested or in lists" do
    {opts, _dir} =
      handler_opts("""
      def big(args):
          n = args["n"]
          inner = {"k%d" % i: i for i in range(n)}
          return {"map": inner, "list": [inner, {"x": inner}]}
      """)

    code = """
    {:ok, _} = DSPex.NativePool.start_link(#{inspect([name: :big_maps, pool_size: 1] ++ opts)})
    for n <- [129, 1_000, 100_000] do
      {:ok, %{"map" => map, "list" => [same, %{"x" => also}]}} =
        DSPex.NativePool.execute("big", %{n: n}, pool: :big_maps)
      {map_size(map), map == same and same == also, map["k#{"\#{n - 1}"}"]}
    end
    """

    assert {:ok, [{129, true, 128}, {1_000, true, 999}, {100_000, true, 99_999}]} =
             ChildVM.eval(code)
  end

  test "a child VM that crashes is reported with its signal" do
    assert {:crashed, "killed by signal 11 (SIGSEGV)", _output} =
             ChildVM.eval(~s|:os.cmd(~c"kill -SEGV \#{System.pid()}")|)
  end

  test "nesting: the deepest the encoder takes comes back; one level more is refused" do
    %{pool: pool} = start_pool!()
    deepest = JSONTerms.nested(JSONTerms.max_depth() - 2)
    assert {:ok, reply} = NativePool.execute("echo", deepest, pool: pool)
    assert reply === JSONTerms.expected(deepest)

    assert {:error, {:validation_error, :invalid_args, message, _}} =
             NativePool.execute("echo", JSONTerms.nested(JSONTerms.max_depth() - 1), pool: pool)

    assert message =~ "nested deeper than 128 levels"
  end
end
