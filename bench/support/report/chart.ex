defmodule Bench.Report.Chart do
  @moduledoc """
  The throughput chart as a standalone SVG: one panel per payload size (their scales differ by
  orders of magnitude), a group of bars per worker/caller combination, one bar per peer.
  """

  alias Bench.Format

  @peers [
    native: {"DSPex.NativePool", "#2b6cb0"},
    v2: {"V2 (checkout + Port)", "#dd6b20"},
    raw: {"Raw limit (no BEAM)", "#718096"}
  ]
  @width 960
  @left 70
  @right 20
  @panel_height 250
  @plot_height 170
  @top 50

  def svg(cases) do
    panels = cases |> Enum.group_by(& &1.payload) |> Enum.sort()
    height = @top + length(panels) * @panel_height

    body =
      panels
      |> Enum.with_index()
      |> Enum.map(fn {{payload, group}, i} -> panel(payload, group, @top + i * @panel_height) end)

    [
      ~s(<svg xmlns="http://www.w3.org/2000/svg" width="#{@width}" height="#{height}" ),
      ~s(viewBox="0 0 #{@width} #{height}" font-family="Helvetica, Arial, sans-serif">\n),
      ~s(<rect width="100%" height="100%" fill="white"/>\n),
      ~s(<text x="#{@left}" y="22" font-size="16" font-weight="bold">Echo throughput in requests per second, higher is better</text>\n),
      legend(),
      body,
      "</svg>\n"
    ]
    |> IO.iodata_to_binary()
  end

  defp legend do
    @peers
    |> Enum.with_index()
    |> Enum.map(fn {{_key, {label, color}}, i} ->
      x = @left + i * 220

      [
        ~s(<rect x="#{x}" y="32" width="12" height="12" fill="#{color}"/>),
        ~s(<text x="#{x + 18}" y="42" font-size="12">#{label}</text>\n)
      ]
    end)
  end

  defp panel(payload, group, y0) do
    group = Enum.sort_by(group, &{&1.workers, &1.callers})
    top = y0 + 30
    bottom = top + @plot_height
    {max, step} = scale(group)
    slot = (@width - @left - @right) / length(group)

    [
      ~s(<text x="#{@left}" y="#{y0 + 18}" font-size="13" font-weight="bold">#{Format.bytes(payload)} payload</text>\n),
      axis(top, bottom, max, step),
      group
      |> Enum.with_index()
      |> Enum.map(fn {c, i} -> bars(c, @left + i * slot, slot, bottom, max) end)
    ]
  end

  defp axis(top, bottom, max, step) do
    ticks =
      for value <- Stream.iterate(0, &(&1 + step)) |> Enum.take_while(&(&1 <= max)) do
        y = bottom - value / max * (bottom - top)

        [
          ~s(<line x1="#{@left}" x2="#{@width - @right}" y1="#{f(y)}" y2="#{f(y)}" stroke="#e2e8f0"/>),
          ~s(<text x="#{@left - 6}" y="#{f(y + 4)}" font-size="11" text-anchor="end" fill="#4a5568">#{Format.short_rate(value)}</text>\n)
        ]
      end

    [
      ticks,
      ~s(<line x1="#{@left}" x2="#{@width - @right}" y1="#{bottom}" y2="#{bottom}" stroke="#4a5568"/>\n)
    ]
  end

  defp bars(c, x0, slot, bottom, max) do
    bar = min(slot * 0.8 / 3, 40)
    start = x0 + (slot - bar * 3) / 2

    bars =
      @peers
      |> Enum.with_index()
      |> Enum.map(fn {{key, {label, color}}, i} ->
        value = throughput(Map.fetch!(c, key))
        h = value / max * @plot_height
        x = start + i * bar

        [
          ~s(<rect x="#{f(x)}" y="#{f(bottom - h)}" width="#{f(bar - 2)}" height="#{f(h)}" fill="#{color}">),
          ~s(<title>#{label}: #{Format.int(value)} req/s</title></rect>),
          if(bar >= 16,
            do:
              ~s(<text x="#{f(x + bar / 2 - 1)}" y="#{f(bottom - h - 3)}" font-size="9" text-anchor="middle" fill="#2d3748">#{Format.short_rate(value)}</text>),
            else: ""
          ),
          "\n"
        ]
      end)

    label_x = f(x0 + slot / 2)

    [
      bars,
      ~s(<text x="#{label_x}" y="#{bottom + 16}" font-size="11" text-anchor="middle">#{c.workers}w · #{c.callers}c</text>\n)
    ]
  end

  defp throughput(%{throughput: t}) when is_number(t), do: t
  defp throughput(_failed), do: 0

  # A round maximum and tick step (1, 2 or 5 times a power of ten) covering every bar.
  defp scale(group) do
    top =
      group
      |> Enum.flat_map(fn c -> Enum.map(Keyword.keys(@peers), &throughput(Map.fetch!(c, &1))) end)
      |> Enum.max(fn -> 1 end)
      |> max(1)

    raw_step = top / 5
    magnitude = :math.pow(10, floor(:math.log10(raw_step)))
    step = Enum.find([1, 2, 5, 10], &(&1 * magnitude >= raw_step)) * magnitude
    {ceil(top / step) * step, step}
  end

  defp f(x), do: :erlang.float_to_binary(x / 1, decimals: 1)
end
