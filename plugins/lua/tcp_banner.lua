-- TCP mode examples (docs/LUA.md#tcp-mode), run by tests/e2e_tcp.rs.
--
-- `banner`: a tcp-req action that reads the client's first line from the
-- raw request channel, answers on the response channel, and lets the rest
-- of the connection go to the backend (act.STOP: accept) or refuses it.
core.register_action("banner", { "tcp-req" }, function(txn)
  local hello = txn.req:getline()
  if hello == nil or hello:sub(1, 5) ~= "HELO " then
    return act.DENY
  end
  local who = hello:sub(6):gsub("[\r\n]+$", "")
  txn.res:send("hi " .. who .. "\r\n")
  txn:set_var("txn.who", who)
  -- Tell the server who it is talking to, ahead of the client's own bytes.
  txn.req:prepend("USER " .. who .. "\n")
  return act.STOP
end)

-- `lines`: a TCP service echoing each line in upper case until "QUIT",
-- then a fixed-size read (receive(n)) and a read with a timeout.
core.register_service("lines", "tcp", function(applet)
  applet:send("ready\r\n")
  while true do
    local line = applet:getline()
    if line == "" then return end
    if line:sub(1, 4) == "QUIT" then break end
    applet:send(line:upper())
  end
  local four = applet:receive(4)
  applet:send("got4:" .. four .. "\r\n")
  local none = applet:receive(10, 200)
  applet:send("timeout:" .. tostring(none) .. "\r\n")
end)
