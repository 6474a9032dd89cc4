defmodule DSPex.NativePool.Spin do
  @moduledoc false
  # Whether a call whose request went to an idle worker should poll for its reply
  # (`:busy_wait_us`). Polling pays when the reply comes within the poll's window: the
  # scheduler stays awake and no one has to wake it. On a loaded machine the reply comes
  # later, the poll times out, and the CPU it took was the workers'. So the pool keeps a score
  # of the replies to idle workers, polled for or not: each one that came within the window
  # raises it, each one that did not lowers it, and calls poll while it is not negative.

  @typedoc "One pool's score."
  @opaque t :: :atomics.atomics_ref()

  # Bounded, so a few replies are enough to follow a change of load, and a lone slow reply
  # among quick ones does not switch polling off.
  @bound 4

  @spec new() :: t
  def new, do: :atomics.new(1, signed: true)

  @spec pays?(t) :: boolean
  def pays?(spin), do: :atomics.get(spin, 1) >= 0

  # Not atomic as a whole: two replies at once may each move the score from the same value,
  # and one of the moves is lost, which a score of this kind can afford.
  @spec replied(t, integer, integer) :: :ok
  def replied(spin, submitted, wait) do
    step = if System.monotonic_time() - submitted <= wait, do: 1, else: -1
    score = :atomics.get(spin, 1) + step
    :atomics.put(spin, 1, score |> min(@bound) |> max(-@bound))
  end
end
