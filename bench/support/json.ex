defmodule Bench.JSON do
  @moduledoc """
  A small JSON encoder and decoder in pure Elixir, standing in for Jason in the V2 peer (this
  project has no hex packages).

  It does what Jason does on the V2 hot path: `encode!/1` builds iodata and flattens it to a binary
  (as `Jason.encode!/1` does), and `decode/1` returns maps with string keys, with strings that
  need no unescaping returned as sub-binaries of the input (no copy). Two shortcuts make it, if
  anything, faster than Jason, so V2 is not handicapped by it:

    * runs of bytes that need no escaping are found with `:binary.match/2` (C speed) instead of a
      byte-at-a-time loop;
    * it does not validate UTF-8, nor reject raw control characters inside decoded strings.

  The benchmark reports its cost per payload size separately (see `Bench.JsonCost`).
  """

  # Bytes that must be escaped inside a JSON string, and those that end a run when decoding.
  @escaped [<<?">>, <<?\\>> | for(byte <- 0..31, do: <<byte>>)]
  @string_stops [<<?">>, <<?\\>>]

  ## Encoding

  @doc "Encodes `term` to a JSON binary; raises `ArgumentError` for what JSON cannot carry."
  @spec encode!(term) :: binary
  def encode!(term), do: term |> encode_to_iodata() |> IO.iodata_to_binary()

  @spec encode_to_iodata(term) :: iodata
  def encode_to_iodata(term), do: value(term)

  defp value(nil), do: "null"
  defp value(true), do: "true"
  defp value(false), do: "false"
  defp value(atom) when is_atom(atom), do: string(Atom.to_string(atom))
  defp value(binary) when is_binary(binary), do: string(binary)
  defp value(int) when is_integer(int), do: Integer.to_string(int)
  defp value(float) when is_float(float), do: :erlang.float_to_binary(float, [:short])
  defp value(map) when is_map(map) and not is_struct(map), do: object(Map.to_list(map))
  defp value(list) when is_list(list), do: array(list)
  defp value(other), do: raise(ArgumentError, "cannot encode #{inspect(other)} as JSON")

  defp object([]), do: "{}"
  defp object([{key, val} | rest]), do: [?{, key(key), ?:, value(val) | members(rest)]

  defp members([]), do: [?}]
  defp members([{key, val} | rest]), do: [?,, key(key), ?:, value(val) | members(rest)]

  defp key(key) when is_binary(key), do: string(key)
  defp key(key) when is_atom(key), do: string(Atom.to_string(key))
  defp key(key), do: raise(ArgumentError, "JSON object keys must be strings, got #{inspect(key)}")

  defp array([]), do: "[]"
  defp array([first | rest]), do: [?[, value(first) | elements(rest)]

  defp elements([]), do: [?]]
  defp elements([item | rest]), do: [?,, value(item) | elements(rest)]

  defp string(s), do: [?", escape(s), ?"]

  # Passes each run of plain bytes through whole and escapes the byte that ends it.
  defp escape(s) do
    case :binary.match(s, pattern(:escaped)) do
      :nomatch ->
        s

      {pos, 1} ->
        <<plain::binary-size(pos), byte, rest::binary>> = s
        [plain, escape_byte(byte) | escape(rest)]
    end
  end

  defp escape_byte(?"), do: "\\\""
  defp escape_byte(?\\), do: "\\\\"
  defp escape_byte(?\n), do: "\\n"
  defp escape_byte(?\r), do: "\\r"
  defp escape_byte(?\t), do: "\\t"
  defp escape_byte(?\b), do: "\\b"
  defp escape_byte(?\f), do: "\\f"

  defp escape_byte(byte),
    do: ["\\u00", Integer.to_string(div(byte, 16), 16), Integer.to_string(rem(byte, 16), 16)]

  ## Decoding

  @doc "Decodes a JSON binary: `{:ok, term}` or `{:error, reason}`."
  @spec decode(binary) :: {:ok, term} | {:error, term}
  def decode(json) when is_binary(json) do
    {term, rest} = json |> skip_ws() |> parse()

    case skip_ws(rest) do
      "" -> {:ok, term}
      trailing -> {:error, {:trailing_data, preview(trailing)}}
    end
  catch
    {__MODULE__, reason} -> {:error, reason}
  end

  @doc "Like `decode/1`, but raises on invalid JSON."
  @spec decode!(binary) :: term
  def decode!(json) do
    case decode(json) do
      {:ok, term} -> term
      {:error, reason} -> raise ArgumentError, "invalid JSON: #{inspect(reason)}"
    end
  end

  defp parse(<<?{, rest::binary>>), do: object_start(skip_ws(rest))
  defp parse(<<?[, rest::binary>>), do: array_start(skip_ws(rest))
  defp parse(<<?", rest::binary>>), do: parse_string(rest)
  defp parse(<<"true", rest::binary>>), do: {true, rest}
  defp parse(<<"false", rest::binary>>), do: {false, rest}
  defp parse(<<"null", rest::binary>>), do: {nil, rest}
  defp parse(<<c, _::binary>> = json) when c in ?0..?9 or c == ?-, do: parse_number(json)
  defp parse(other), do: fail({:unexpected, preview(other)})

  defp object_start(<<?}, rest::binary>>), do: {%{}, rest}
  defp object_start(json), do: object_member(json, [])

  defp object_member(<<?", rest::binary>>, acc) do
    {key, rest} = parse_string(rest)
    rest = expect(skip_ws(rest), ?:)
    {val, rest} = rest |> skip_ws() |> parse()
    acc = [{key, val} | acc]

    case skip_ws(rest) do
      <<?,, rest::binary>> -> object_member(skip_ws(rest), acc)
      # Reversed first so that, as in Jason, the last of duplicate keys wins.
      <<?}, rest::binary>> -> {:maps.from_list(:lists.reverse(acc)), rest}
      other -> fail({:expected_comma_or_brace, preview(other)})
    end
  end

  defp object_member(other, _acc), do: fail({:expected_key, preview(other)})

  defp array_start(<<?], rest::binary>>), do: {[], rest}
  defp array_start(json), do: array_element(json, [])

  defp array_element(json, acc) do
    {val, rest} = parse(json)
    acc = [val | acc]

    case skip_ws(rest) do
      <<?,, rest::binary>> -> array_element(skip_ws(rest), acc)
      <<?], rest::binary>> -> {:lists.reverse(acc), rest}
      other -> fail({:expected_comma_or_bracket, preview(other)})
    end
  end

  # The common case, no escapes, is one :binary.match and a sub-binary of the input.
  defp parse_string(json) do
    case :binary.match(json, pattern(:string_stops)) do
      {pos, 1} ->
        case json do
          <<s::binary-size(pos), ?", rest::binary>> -> {s, rest}
          <<plain::binary-size(pos), ?\\, rest::binary>> -> unescape(rest, [plain])
        end

      :nomatch ->
        fail(:unterminated_string)
    end
  end

  defp unescape(<<esc, rest::binary>>, acc) when esc in ~c(\"\\/bfnrt) do
    continue_string(rest, [acc | simple_escape(esc)])
  end

  defp unescape(<<?u, hex::binary-size(4), rest::binary>>, acc) do
    {codepoint, rest} = unicode_escape(hex_value(hex), rest)
    continue_string(rest, [acc | <<codepoint::utf8>>])
  end

  defp unescape(other, _acc), do: fail({:bad_escape, preview(other)})

  defp continue_string(json, acc) do
    case :binary.match(json, pattern(:string_stops)) do
      {pos, 1} ->
        case json do
          <<plain::binary-size(pos), ?", rest::binary>> ->
            {IO.iodata_to_binary([acc | plain]), rest}

          <<plain::binary-size(pos), ?\\, rest::binary>> ->
            unescape(rest, [acc | plain])
        end

      :nomatch ->
        fail(:unterminated_string)
    end
  end

  defp simple_escape(?b), do: "\b"
  defp simple_escape(?f), do: "\f"
  defp simple_escape(?n), do: "\n"
  defp simple_escape(?r), do: "\r"
  defp simple_escape(?t), do: "\t"
  defp simple_escape(char), do: <<char>>

  # A high surrogate must be followed by an escaped low one; together they make one codepoint.
  defp unicode_escape(high, <<"\\u", hex::binary-size(4), rest::binary>>)
       when high in 0xD800..0xDBFF do
    low = hex_value(hex)

    if low in 0xDC00..0xDFFF,
      do: {0x10000 + Bitwise.bsl(high - 0xD800, 10) + (low - 0xDC00), rest},
      else: fail(:lone_surrogate)
  end

  defp unicode_escape(code, _rest) when code in 0xD800..0xDFFF, do: fail(:lone_surrogate)
  defp unicode_escape(code, rest), do: {code, rest}

  defp hex_value(hex) do
    case Integer.parse(hex, 16) do
      {value, ""} -> value
      _ -> fail({:bad_unicode_escape, hex})
    end
  end

  defp parse_number(json) do
    {length, float?} = number_extent(json, 0, false)
    <<text::binary-size(length), rest::binary>> = json

    number =
      case float? && Float.parse(text) do
        false -> String.to_integer(text)
        {float, ""} -> float
        _ -> fail({:bad_number, text})
      end

    {number, rest}
  rescue
    ArgumentError -> fail({:bad_number, preview(json)})
  end

  defp number_extent(json, n, float?) do
    case json do
      <<_::binary-size(n), c, _::binary>> when c in ?0..?9 or c in [?-, ?+] ->
        number_extent(json, n + 1, float?)

      <<_::binary-size(n), c, _::binary>> when c in [?., ?e, ?E] ->
        number_extent(json, n + 1, true)

      _ ->
        {n, float?}
    end
  end

  defp expect(<<char, rest::binary>>, char), do: rest
  defp expect(other, char), do: fail({:expected, <<char>>, preview(other)})

  defp skip_ws(<<c, rest::binary>>) when c in [?\s, ?\n, ?\r, ?\t], do: skip_ws(rest)
  defp skip_ws(json), do: json

  defp fail(reason), do: throw({__MODULE__, reason})

  defp preview(json), do: binary_part(json, 0, min(byte_size(json), 20))

  # Compiled once per VM: a compiled pattern is a reference, so it cannot be a module attribute.
  defp pattern(name) do
    key = {__MODULE__, name}

    case :persistent_term.get(key, nil) do
      nil ->
        compiled = :binary.compile_pattern(patterns(name))
        :persistent_term.put(key, compiled)
        compiled

      compiled ->
        compiled
    end
  end

  defp patterns(:escaped), do: @escaped
  defp patterns(:string_stops), do: @string_stops
end
