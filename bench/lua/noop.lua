-- bench scenario `lua-noop`: the cost of entering Lua once per request.
core.register_action("bench_noop", { "http-req" }, function(txn)
end)
