-- TCP mode (api/tcp.rs): Channel's data methods on a TCP stream's raw
-- channels, as HAProxy 2.6 has them in tcp-req actions, and the AppletTCP
-- object TCP services get. `T` holds the primitives over the running
-- stream; a wait yields a ChanWait to the host (IO marker). Outside a TCP
-- stream the Channel methods keep their HTTP-mode behaviour (an error).
local P, T, Channel, txn, ERR, IO, F = ...
local type, error, yield, mtype, tostring = type, error, coroutine.yield, math.type, tostring

local wrap = P.wrap
for k, f in pairs(T) do
  if type(f) == "function" and k ~= "active" and k ~= "done" then T[k] = wrap(f) end
end

local function bad(n, fname, expected, v)
  error("bad argument #" .. n .. " to '" .. fname .. "' (" .. expected .. " expected, got " .. type(v) .. ")", 3)
end
local function checkint(v, n, fname)
  if mtype(v) ~= "integer" then
    if type(v) == "number" and v == math.floor(v) then return math.tointeger(v) end
    bad(n, fname, "integer", v)
  end
  return v
end

-- One wait for more data on a channel (the request's from the client, the
-- response's from the server while tcp_response rules run); false when no
-- more can come. `ms`: see T.wait.
local function more(resp, ms)
  if not T.active(resp) then return false end
  local w = T.wait(ms, resp)
  if w == nil then return false end
  yield(IO, w)
  return T.done(w)
end

-- The input offset HAProxy's `offset` argument names (negative: from the end).
local function offset_of(off, input, fname)
  if off == nil then return 0 end
  off = checkint(off, 2, fname)
  if off < 0 then
    off = input + off
    if off < 0 then off = 0 end
  end
  if off > input then error("offset out of range.", 3) end
  return off
end

local TC = {}

-- A channel's input length; 0 for a channel not there (the response
-- channel in a tcp-req action, the request channel in a tcp-res action).
local function input_of(resp)
  if not T.active(resp) then return 0 end
  return T.state("input", resp)
end

-- data([offset[, length]]): waits until `length` bytes are there past
-- `offset` (-1: as much as the buffer holds), or no more can come.
function TC.data(chn, offset, length)
  local resp = chn.__chn
  if length ~= nil then
    length = checkint(length, 3, "data")
    if length == -1 then length = 16384 end
    if length < 0 then error("length out of range.", 2) end
  end
  while true do
    local input = input_of(resp)
    local off = offset_of(offset, input, "data")
    local avail = input - off
    if length == nil then
      if avail > 0 then return T.sub(off, avail, resp) end
      if not more(resp) then return nil end
    elseif avail >= length then
      return T.sub(off, length, resp)
    elseif not more(resp) then
      if avail == 0 then return nil end
      return T.sub(off, avail, resp)
    end
  end
end
TC.dup = function(chn) return TC.data(chn) end

-- line([offset[, length]]): the first line (with its "\n") from offset.
function TC.line(chn, offset, length)
  local resp = chn.__chn
  if length ~= nil then length = checkint(length, 3, "line") end
  while true do
    local input = input_of(resp)
    local off = offset_of(offset, input, "line")
    local nl = T.active(resp) and T.find(off, resp) or nil
    local limit = length ~= nil and length >= 0 and off + length or nil
    if nl ~= nil and (limit == nil or nl < limit) then
      return T.sub(off, nl - off + 1, resp)
    end
    if limit ~= nil and input >= limit then return T.sub(off, length, resp) end
    if not more(resp) then
      if input - off == 0 then return nil end
      return T.sub(off, input - off, resp)
    end
  end
end

function TC.get(chn)
  local d = TC.data(chn)
  if d ~= nil and T.active(chn.__chn) then T.splice(0, #d, nil, chn.__chn) end
  return d
end

function TC.getline(chn)
  local l = TC.line(chn)
  if l ~= nil and T.active(chn.__chn) then T.splice(0, #l, nil, chn.__chn) end
  return l
end

function TC.remove(chn, offset, length)
  local resp = chn.__chn
  if not T.active(resp) then return 0 end
  local input = T.state("input", resp)
  local off = offset_of(offset, input, "remove")
  local len = input - off
  if length ~= nil then
    length = checkint(length, 3, "remove")
    if length ~= -1 then
      if length < 0 or length > len then error("length out of range.", 2) end
      len = length
    end
  end
  return T.splice(off, len, nil, resp)
end

local function str(v, n, fname)
  if type(v) == "number" then return tostring(v) end
  if type(v) ~= "string" then bad(n, fname, "string", v) end
  return v
end

function TC.set(chn, s, offset, length)
  s = str(s, 2, "set")
  local resp = chn.__chn
  if not T.active(resp) then return -1 end
  local input = T.state("input", resp)
  local off = offset_of(offset, input, "set")
  local len = input - off
  if length ~= nil then
    length = checkint(length, 4, "set")
    if length ~= -1 then
      if length < 0 or length > len then error("length out of range.", 2) end
      len = length
    end
  end
  local n = T.splice(off, len, s, resp)
  if n == -1 then return -1 end
  return #s
end

function TC.insert(chn, s, offset)
  s = str(s, 2, "insert")
  local resp = chn.__chn
  if not T.active(resp) then return -1 end
  local input = T.state("input", resp)
  local off = offset_of(offset, input, "insert")
  local n = T.splice(off, 0, s, resp)
  if n == -1 then return -1 end
  return #s
end
function TC.append(chn, s)
  s = str(s, 2, "append")
  return TC.insert(chn, s, input_of(chn.__chn))
end
function TC.prepend(chn, s)
  s = str(s, 2, "prepend")
  return TC.insert(chn, s, 0)
end

-- send(string): immediately out. In a tcp-req action the response
-- channel's data goes to the client now and the request channel's to the
-- server once it is connected; in a tcp-res action the response channel's
-- goes to the client ahead of the server's data.
function TC.send(chn, s)
  s = str(s, 2, "send")
  local resp = chn.__chn
  if T.active(resp) then return T.push_out(s, resp) end
  if resp then
    if #s > 0 then yield(IO, T.send(s)) end
    return #s
  end
  return -1
end

function TC.forward(chn, n)
  n = checkint(n, 2, "forward")
  if not T.active(chn.__chn) then return 0 end
  return T.forward(n, chn.__chn)
end

function TC.input(chn) return input_of(chn.__chn) end
function TC.output(chn)
  if not T.active(chn.__chn) then return 0 end
  return T.state("output", chn.__chn)
end
function TC.is_full(chn)
  if not T.active(chn.__chn) then return false end
  return T.state("is_full", chn.__chn)
end
function TC.may_recv(chn)
  if not T.active(chn.__chn) then return false end
  return T.state("may_recv", chn.__chn)
end

-- In a TCP filter's tcp_payload the channel is the filter's window: the
-- bytes it has not forwarded yet (F's primitives, as HTTPMessage's body
-- methods); nothing there waits for more data (a filter cannot yield).
local FC = {}
function FC.data(chn, offset, length)
  if length ~= nil then length = checkint(length, 3, "data") end
  return F.body(chn.__chn, offset, length)
end
FC.dup = function(chn) return FC.data(chn) end
function FC.line(chn, offset, length)
  local d = FC.data(chn, offset, length)
  if d == nil then return nil end
  local nl = d:find("\n", 1, true)
  if nl ~= nil then return d:sub(1, nl) end
  return d
end
function FC.get(chn)
  local d = FC.data(chn)
  if d ~= nil and #d > 0 then F.remove(chn.__chn, 0, #d) end
  return d
end
function FC.getline(chn)
  local l = FC.line(chn)
  if l ~= nil and #l > 0 then F.remove(chn.__chn, 0, #l) end
  return l
end
function FC.remove(chn, offset, length) return F.remove(chn.__chn, offset, length) end
function FC.set(chn, s, offset, length) return F.set(chn.__chn, str(s, 2, "set"), offset, length) end
function FC.insert(chn, s, offset) return F.insert(chn.__chn, str(s, 2, "insert"), offset, "at") end
function FC.append(chn, s) return F.insert(chn.__chn, str(s, 2, "append"), nil, "end") end
function FC.prepend(chn, s) return F.insert(chn.__chn, str(s, 2, "prepend"), nil, "front") end
function FC.send(chn, s) return F.send(chn.__chn, str(s, 2, "send")) end
function FC.forward(chn, n) return F.forward(chn.__chn, checkint(n, 2, "forward")) end
function FC.input(chn) return F.state("input", chn.__chn) end
function FC.output(chn) return F.state("output", chn.__chn) end
function FC.is_full(chn) return F.state("is_full", chn.__chn) end
function FC.may_recv(chn) return F.state("may_recv", chn.__chn) end

for m, f in pairs(TC) do
  local http = Channel[m]
  local flt = FC[m]
  Channel[m] = function(chn, ...)
    if flt ~= nil and F.tcp() then return flt(chn, ...) end
    if T.active(false) or T.active(true) then return f(chn, ...) end
    if http == nil then error("Cannot manipulate HAProxy channels in HTTP mode.", 2) end
    return http(chn, ...)
  end
end
Channel.get_in_len = Channel.input
Channel.get_out_len = Channel.output

-- AppletTCP ------------------------------------------------------------------
local TXN = getmetatable(txn).__index
local A = {}

-- getline(): a line with its "\n"; at the end of the stream what is left ("" if nothing).
function A.getline(applet)
  while true do
    local nl = T.find(0)
    if nl ~= nil then
      local l = T.sub(0, nl + 1)
      T.splice(0, nl + 1, nil)
      return l
    end
    if T.state("is_full") or not more(false, -1) then
      local l = T.sub(0, T.state("input"))
      T.splice(0, #l, nil)
      return l
    end
  end
end

-- receive([size[, timeout]]): `size` bytes (fewer at the end of the
-- stream), or everything until the end; `timeout` in milliseconds.
function A.receive(applet, size, timeout)
  if size ~= nil then
    size = checkint(size, 1, "receive")
  end
  local ms = -1
  if timeout ~= nil then ms = checkint(timeout, 2, "receive") end
  while true do
    local input = T.state("input")
    if size ~= nil and size >= 0 and input >= size then
      local d = T.sub(0, size)
      T.splice(0, size, nil)
      return d
    end
    local full = T.state("is_full")
    if full and (size == nil or size < 0) then
      -- Hand out what fills the buffer; the rest comes with the next call.
      local d = T.sub(0, input)
      T.splice(0, input, nil)
      return d
    end
    if not more(false, ms) then
      local d = T.sub(0, input)
      T.splice(0, input, nil)
      if d == "" and timeout ~= nil and not T.state("closed") then return nil end
      return d
    end
  end
end

function A.send(applet, s)
  s = str(s, 1, "send")
  if #s > 0 then yield(IO, T.send(s)) end
end

for _, k in ipairs({ "set_var", "get_var", "unset_var", "get_priv", "set_priv" }) do
  A[k] = TXN[k]
end
local applet = setmetatable({}, { __index = A })
rawset(applet, "f", rawget(txn, "f"))
rawset(applet, "sf", rawget(txn, "sf"))
rawset(applet, "c", rawget(txn, "c"))
rawset(applet, "sc", rawget(txn, "sc"))
return applet
