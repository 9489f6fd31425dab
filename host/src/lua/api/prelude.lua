-- The Lua side of portcullis's HAProxy API. Runs once per state, before the
-- plugin's script. `P` holds the Rust functions; SLEEP and DONE are markers
-- yielded to the host. Returns the request (txn) and applet objects.
local P, SLEEP, DONE, ERR, IO, END = ...
local yield, type, error, tostring, setmetatable, rawset, pairs, ipairs =
  coroutine.yield, type, error, tostring, setmetatable, rawset, pairs, ipairs
local mtype, lower, concat = math.type, string.lower, table.concat
local getmetatable, select, format = getmetatable, select, string.format

-- Rust functions report errors as (ERR, message); raise them as plain
-- string errors located at the script's call, as HAProxy's C functions do.
local function wrap(f)
  return function(...)
    local a, b, c = f(...)
    if a == ERR then error(b, 2) end
    return a, b, c
  end
end
-- filter.lua (run after this prelude) raises its primitives' errors the same way.
P.wrap = wrap
for _, t in ipairs({ P.core, P.txn, P.http, P.applet, P.debug, P.server_methods, P.proxy_methods }) do
  for k, f in pairs(t) do
    if type(f) == "function" then t[k] = wrap(f) end
  end
end
-- StickTable methods (one metatable per table, hung on core.backends).
for _, be in pairs(P.core.backends) do
  local st = rawget(be, "stktable")
  if st ~= nil then
    local methods = getmetatable(st).__index
    for k, f in pairs(methods) do
      if type(f) == "function" then methods[k] = wrap(f) end
    end
  end
end
-- The Map class: the object methods live in one metatable's __index.
Map = P.map_class
Map.new = wrap(Map.new)
Regex = P.regex_class
Regex.new = wrap(Regex.new)
for k, f in pairs(P.map_methods) do P.map_methods[k] = wrap(f) end
local set_done, wake_time = P.set_done, P.wake_time
local get_field, set_field = wrap(P.get_field), wrap(P.set_field)

local function bad(n, fname, expected, v)
  error("bad argument #" .. n .. " to '" .. fname .. "' (" .. expected .. " expected, got " .. type(v) .. ")", 3)
end

-- debug: getinfo and traceback only (api/debug.rs says why).
debug = P.debug

-- core -----------------------------------------------------------------------
core = P.core
core.emerg, core.alert, core.crit, core.err = 0, 1, 2, 3
core.warning, core.notice, core.info, core.debug = 4, 5, 6, 7

function core.msleep(ms)
  if type(ms) ~= "number" then bad(1, "msleep", "number", ms) end
  yield(SLEEP, ms)
end

function core.sleep(s)
  if type(s) ~= "number" then bad(1, "sleep", "number", s) end
  yield(SLEEP, s * 1000)
end

function core.yield()
  yield(SLEEP, 0)
end

-- core.done([value]): ends the current call (action, service, task, fetch,
-- converter) at once; a fetch or converter returns the value.
function core.done(...)
  yield(END, ...)
end

-- HAProxy 3.x's core.use_native_mailers_config() (2.8 called it
-- core.disable_legacy_mailers()): a script declares it sends the email
-- alerts itself from Proxy:get_mailers(), so HAProxy's built-in sender
-- stands down. portcullis has no built-in sender and answers get_mailers()
-- in any case, so there is nothing to switch.
function core.use_native_mailers_config() end
core.disable_legacy_mailers = core.use_native_mailers_config

-- Socket (core.tcp): cosockets. A method starts its operation in Rust,
-- yields the socket to the host while it runs, then returns its outcome.
local S = P.socket
for k, f in pairs(S) do S[k] = wrap(f) end
local Socket = {}
Socket.__index = Socket
local function io(self, op, ...)
  if S.start(self.s, op, ...) then yield(IO, self.s) end
  return S.result(self.s)
end
function Socket:connect(address, port) return io(self, "connect", address, port) end
-- HAProxy checks the count exactly (check_args(L, 3, "connect_ssl")):
-- the port is a separate argument here, never part of the address.
function Socket:connect_ssl(...)
  if select("#", ...) ~= 2 then error("'connect_ssl' needs 3 arguments", 2) end
  return io(self, "connect_ssl", ...)
end
function Socket:send(data, i, j) return io(self, "send", data, i, j) end
function Socket:receive(pattern, prefix) return io(self, "receive", pattern, prefix) end
function Socket:settimeout(t) return S.settimeout(self.s, t) end
function Socket:close() return S.close(self.s) end
function Socket:getpeername() return S.getpeername(self.s) end
function Socket:getsockname() return S.getsockname(self.s) end
function core.tcp()
  return setmetatable({ s = S.new() }, Socket)
end

-- HTTPClient (core.httpclient): one request per call, on the cosocket path.
local H = P.httpclient
for k, f in pairs(H) do H[k] = wrap(f) end
local HTTPClient = {}
HTTPClient.__index = HTTPClient
for _, m in ipairs({ "get", "head", "put", "post", "delete" }) do
  local method = m:upper()
  HTTPClient[m] = function(self, request)
    local call = H.start(method, request)
    yield(IO, call)
    return H.result(call)
  end
end
function core.httpclient()
  return setmetatable({}, HTTPClient)
end

-- Concat (core.concat): HAProxy's buffer object; parts are joined by dump().
local Concat = { __index = {} }
local function check_concat(c, fname)
  if type(c) ~= "table" or getmetatable(c) ~= Concat then
    error("bad argument #1 to '" .. fname .. "' (Concat expected, got " .. type(c) .. ")", 3)
  end
end
function Concat.__index.add(c, ...)
  check_concat(c, "add")
  local s = ...
  local t = type(s)
  if t ~= "string" and t ~= "number" then
    -- As luaL_checklstring reports it for c:add(x).
    if select("#", ...) == 0 then t = "no value" end
    error("bad argument #1 to 'add' (string expected, got " .. t .. ")", 2)
  end
  local parts = c[1]
  parts[#parts + 1] = tostring(s)
end
function Concat.__index.dump(c)
  check_concat(c, "dump")
  local parts = c[1]
  -- Joined once and kept as one part: repeated dumps cost no more.
  if #parts > 1 then
    local all = concat(parts)
    c[1] = { all }
    return all
  end
  return parts[1] or ""
end
function Concat.__tostring(c)
  return format("Concat object: %p", c)
end
function core.concat()
  return setmetatable({ [1] = {} }, Concat)
end

-- Queue (core.queue, HAProxy 2.8): a FIFO of values of this state; pop_wait
-- sleeps (yielding like a socket) until another coroutine pushes.
local Q = P.queue
local QMAX = Q.max
local Queue = { __index = {} }
local function check_queue(q, fname)
  if type(q) ~= "table" or getmetatable(q) ~= Queue then
    error("bad argument #1 to '" .. fname .. "' (Queue expected, got " .. type(q) .. ")", 3)
  end
end
local function qpop(q)
  local head = q.head
  if head > q.tail then return nil end
  local items = q.items
  local v = items[head]
  items[head] = nil
  if head == q.tail then
    -- Empty again: start over at 1 so the items stay in the array part.
    q.head, q.tail = 1, 0
  else
    q.head = head + 1
  end
  return v
end
function Queue.__index.size(q)
  check_queue(q, "size")
  return q.tail - q.head + 1
end
function Queue.__index.push(q, ...)
  check_queue(q, "push")
  local n, v = select("#", ...), ...
  if n ~= 1 or v == nil then error("unexpected argument", 2) end
  if q.tail - q.head + 1 >= QMAX then return false end
  local tail = q.tail + 1
  q.items[tail] = v
  q.tail = tail
  Q.wake(q[0])
  return true
end
function Queue.__index.pop(q)
  check_queue(q, "pop")
  return qpop(q)
end
function Queue.__index.pop_wait(q)
  check_queue(q, "pop_wait")
  local deadline
  while true do
    local v = qpop(q)
    if v ~= nil then return v end
    local armed, d = Q.arm(q[0], deadline)
    if armed == ERR then error(d, 2) end
    if not armed then return nil end
    deadline = d
    yield(IO, q[0])
  end
end
function core.queue()
  return setmetatable({ [0] = Q.new(), items = {}, head = 1, tail = 0 }, Queue)
end

-- act ------------------------------------------------------------------------
act = {
  CONTINUE = 0, STOP = 1, YIELD = 2, ERROR = 3,
  DONE = 4, DENY = 5, ABORT = 6, INVALID = 7,
}
function act.wake_time(a, b)
  local ms = b
  if a ~= act then ms = a end
  if mtype(ms) ~= "integer" then bad(1, "wake_time", "integer", ms) end
  wake_time(ms)
end

-- reply objects (txn:reply) ------------------------------------------------------
local Reply = {}
Reply.__index = Reply

function Reply:set_status(status, reason)
  if mtype(status) ~= "integer" then bad(1, "set_status", "integer", status) end
  if reason ~= nil and type(reason) ~= "string" then bad(2, "set_status", "string", reason) end
  self.status = status
  self.reason = reason
end

function Reply:add_header(name, value)
  if type(name) ~= "string" then bad(1, "add_header", "string", name) end
  if type(value) ~= "string" and type(value) ~= "number" then bad(2, "add_header", "string", value) end
  name = lower(name)
  local l = self.headers[name]
  if l == nil then
    l = {}
    self.headers[name] = l
  end
  l[#l + 1] = tostring(value)
end

function Reply:del_header(name)
  if type(name) ~= "string" then bad(1, "del_header", "string", name) end
  self.headers[lower(name)] = nil
end

function Reply:set_body(body)
  if type(body) ~= "string" and type(body) ~= "number" then bad(1, "set_body", "string", body) end
  self.body = tostring(body)
end

local function new_reply(_, t)
  local r = setmetatable({ status = 200, headers = {}, body = "" }, Reply)
  if t == nil then return r end
  if type(t) ~= "table" then bad(1, "reply", "table", t) end
  if t.status ~= nil then r:set_status(t.status, t.reason) end
  if t.headers ~= nil then
    if type(t.headers) ~= "table" then error("reply: 'headers' must be a table", 2) end
    for k, v in pairs(t.headers) do
      if type(v) == "table" then
        for _, x in ipairs(v) do r:add_header(k, x) end
      else
        r:add_header(k, v)
      end
    end
  end
  if t.body ~= nil then r:set_body(t.body) end
  return r
end

-- sample fetch and converter objects (txn.f, txn.sf, txn.c, txn.sc) ----------------
local function samples(fn, stringify)
  return setmetatable({}, {
    __index = function(t, k)
      local f = function(_, ...)
        local v, msg = fn(k, stringify, ...)
        if v == ERR then error(msg, 2) end
        return v
      end
      rawset(t, k, f)
      return f
    end,
  })
end
local F, SF = samples(P.fetch, false), samples(P.fetch, true)
local C, SC = samples(P.conv, false), samples(P.conv, true)

-- txn ------------------------------------------------------------------------
local TXN = {}
for k, v in pairs(P.txn) do TXN[k] = v end
TXN.reply = new_reply
function TXN.done(_, reply)
  local e, msg = set_done(reply)
  if e == ERR then error(msg, 2) end
  yield(DONE)
end
-- Fields a script sets on txn belong to the running request.
setmetatable(TXN, { __index = function(_, k) return (get_field(k)) end })
local txn = setmetatable({}, {
  __index = TXN,
  __newindex = function(_, k, v) set_field(k, v) end,
})
rawset(txn, "http", P.http)
rawset(txn, "f", F)
rawset(txn, "sf", SF)
rawset(txn, "c", C)
rawset(txn, "sc", SC)

-- AppletHTTP -----------------------------------------------------------------
local APPLET = {}
for k, v in pairs(P.applet) do APPLET[k] = v end
for _, k in ipairs({ "set_var", "get_var", "unset_var", "get_priv", "set_priv" }) do
  APPLET[k] = TXN[k]
end
local applet = setmetatable({}, { __index = APPLET })
rawset(applet, "f", F)
rawset(applet, "sf", SF)
rawset(applet, "c", C)
rawset(applet, "sc", SC)

return txn, applet
