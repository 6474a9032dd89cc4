[
  inputs: ["{mix,.formatter}.exs", "*.exs", "{config,support}/**/*.{ex,exs}"]
]
