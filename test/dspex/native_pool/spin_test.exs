defmodule DSPex.NativePool.SpinTest do
  use ExUnit.Case, async: true

  alias DSPex.NativePool.Spin

  @wait System.convert_time_unit(50, :microsecond, :native)
  @slow System.convert_time_unit(10, :millisecond, :native)

  defp quick(spin), do: Spin.replied(spin, System.monotonic_time(), @wait)
  defp slow(spin), do: Spin.replied(spin, System.monotonic_time() - @slow, @wait)

  test "a new pool polls" do
    assert Spin.pays?(Spin.new())
  end

  test "replies later than the poll's window switch polling off, quick ones back on" do
    spin = Spin.new()
    slow(spin)
    refute Spin.pays?(spin)

    quick(spin)
    assert Spin.pays?(spin)
  end

  test "the score is bounded: as many quick replies as slow ones (at most 4) turn it back" do
    spin = Spin.new()
    for _ <- 1..100, do: slow(spin)
    refute Spin.pays?(spin)

    for _ <- 1..3, do: quick(spin)
    refute Spin.pays?(spin)
    quick(spin)
    assert Spin.pays?(spin)
  end

  test "a lone slow reply among quick ones does not switch polling off" do
    spin = Spin.new()
    for _ <- 1..10, do: quick(spin)
    slow(spin)
    assert Spin.pays?(spin)
  end
end
