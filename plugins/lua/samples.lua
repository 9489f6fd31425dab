-- A sample fetch, a converter, and HAProxy's own fetches and converters
-- reached from Lua (txn.f / txn.sf / txn.c).
--   HAProxy:    http-request set-header x-kind %[lua.client_kind(kind=)]
--               http-request set-header x-masked %[req.hdr(x-token),lua.mask(3)]
--               http-request lua.builtins
--   portcullis: { set_header = "x-kind", value = "%[lua.client_kind(kind=)]" }
--               { set_header = "x-masked", value = "%[req.hdr(x-token),lua.mask(3)]" }
--               { lua = "builtins" }

-- "bot" or "human" from the User-Agent, after a prefix argument.
core.register_fetches("client_kind", function(txn, prefix)
  local ua = txn.sf:req_hdr("user-agent")
  local kind = "human"
  if ua:lower():find("bot", 1, true) then kind = "bot" end
  return (prefix or "") .. kind
end)

-- Keeps the first `keep` characters and masks the rest.
core.register_converters("mask", function(s, keep)
  keep = tonumber(keep) or 2
  if #s <= keep then return s end
  return s:sub(1, keep) .. string.rep("*", #s - keep)
end)

core.register_action("builtins", { "http-req" }, function(txn)
  local c, f, sf = txn.c, txn.f, txn.sf
  local set = function(name, v) txn.http:req_set_header(name, tostring(v)) end
  set("x-f-method", f:method())
  set("x-f-path", f:path())
  set("x-f-query", f:query())
  set("x-f-url", f:url())
  set("x-f-base", f:base())
  set("x-f-src", f:src())
  set("x-f-src-port-type", math.type(f:src_port()))
  set("x-f-dst", f:dst())
  set("x-f-hdr", f:req_hdr("x-list"))
  set("x-f-hdr-first", f:req_hdr("x-list", 1))
  set("x-f-fhdr", f:req_fhdr("x-list"))
  set("x-f-cook", f:req_cook("session"))
  set("x-f-missing", tostring(f:req_hdr("x-absent")) .. "|" .. sf:req_hdr("x-absent") .. "|")
  set("x-c-lower", c:lower("MiXeD"))
  set("x-c-upper", c:upper("MiXeD"))
  set("x-c-base64", c:base64("hello, world"))
  set("x-c-b64dec", c:b64dec("aGVsbG8sIHdvcmxk"))
  set("x-c-hex", c:hex("AZ\n"))
  set("x-c-url-dec", c:url_dec("a%20b%2Fc+d"))
  set("x-c-json", c:json("quote\" back\\ tab\t", "utf8"))
  set("x-c-crc32", c:crc32("hello"))
  set("x-c-field", c:field("a,b,c,d", 2, ","))
  set("x-c-field-neg", c:field("a,b,c,d", -1, ","))
  set("x-c-word", c:word("//a//b/c", 2, "/"))
  set("x-c-sha2", c:hex(c:sha2("abc", 256)))
  set("x-c-sha2-512", c:hex(c:sha2("abc", 512)))
  set("x-c-hmac", c:base64(c:hmac("data", "sha256", "a2V5")))
  local toks = core.tokenize("a,b,,c", ",")
  local toks_nb = core.tokenize("a,b,,c", ",", true)
  set("x-tokenize", #toks .. ":" .. table.concat(toks, "|") .. " " .. #toks_nb .. ":" .. table.concat(toks_nb, "|"))
  return act.CONTINUE
end)
