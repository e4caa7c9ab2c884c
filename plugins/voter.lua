-- voter.lua — bundled plugin: watch voter (RTCM) receivers and report dead ones.
--
-- Every interval_seconds it asks each node for its voter receivers (VoterStatus, without
-- blocking anything). Nodes that answer with no receivers give_up_polls times in a row
-- are asked only every retry_seconds afterwards (most nodes have no voter).
--
-- Alerts (warning), each once per episode:
--   * a receiver silent: RSSI 0 for silent_seconds — while another receiver of the same
--     node heard a signal in that time (require_activity: true, the default), so an idle
--     channel is not mistaken for a dead receiver;
--   * a receiver that disappeared from the list.
-- And an info alert when such a receiver comes back.
--
-- Settings: plugins.voter in the YAML config (defaults below); `nodes` limits polling to
-- the listed nodes.

local cfg = nexus.config
local INTERVAL = cfg.interval_seconds or 5
local SILENT = cfg.silent_seconds or 60
local GIVE_UP = cfg.give_up_polls or 12
local RETRY = cfg.retry_seconds or 600
local REQUIRE_ACTIVITY = cfg.require_activity ~= false

-- node -> { misses, next_try, pending, last_activity, receivers = { name -> rx } }
local nodes = {}

local function entry(node)
  local n = nodes[node]
  if not n then
    n = { misses = 0, next_try = 0, pending = false, receivers = {} }
    nodes[node] = n
  end
  return n
end

local function alert(severity, title, message, node, key)
  nexus.alert { severity = severity, title = title, message = message, node = node, key = key }
end

local function heard(n, node, name, rx, now)
  if rx.silent then
    alert("info", "Voter receiver hears again", ("Receiver %s on node %s reports a signal again"):format(name, node),
      node, ("voter_heard:%s:%s"):format(node, name))
  end
  rx.last_heard, rx.silent = now, false
end

local function maybe_silent(n, node, name, rx, now)
  if rx.silent or now - rx.last_heard < SILENT then return end
  if REQUIRE_ACTIVITY and not (n.last_activity and n.last_activity > rx.last_heard) then return end
  rx.silent = true
  alert("warning", "Voter receiver silent",
    ("Receiver %s on node %s has reported RSSI 0 for %ds while other receivers heard signals"):format(
      name, node, math.floor(now - rx.last_heard)),
    node, ("voter_silent:%s:%s"):format(node, name))
end

-- The decision logic: one VoterStatus answer for `node` at time `now` (seconds).
-- Global so it can be driven directly (tests, or an operator's own poller).
function on_receivers(node, receivers, now)
  node, now = tostring(node), now or nexus.now()
  local n = entry(node)
  for _, r in ipairs(receivers) do
    if (r.rssi or 0) > 0 then n.last_activity = now end
  end
  local seen = {}
  for _, r in ipairs(receivers) do
    seen[r.name] = true
    local rx = n.receivers[r.name]
    if not rx then
      rx = { last_heard = now }
      n.receivers[r.name] = rx
    elseif rx.gone then
      rx.gone, rx.last_heard = false, now
      alert("info", "Voter receiver back", ("Receiver %s on node %s is reporting again"):format(r.name, node),
        node, ("voter_back:%s:%s"):format(node, r.name))
    end
    if (r.rssi or 0) > 0 then heard(n, node, r.name, rx, now) else maybe_silent(n, node, r.name, rx, now) end
  end
  for name, rx in pairs(n.receivers) do
    if not seen[name] and not rx.gone then
      rx.gone = true
      alert("warning", "Voter receiver disappeared", ("Receiver %s on node %s is no longer reported"):format(name, node),
        node, ("voter_gone:%s:%s"):format(node, name))
    end
  end
end

local function answered(node, n, receivers, err)
  n.pending = false
  local now = nexus.now()
  if receivers and #receivers > 0 then
    n.misses, n.next_try = 0, 0
    on_receivers(node, receivers, now)
    return
  end
  if next(n.receivers) ~= nil and receivers then
    on_receivers(node, receivers, now) -- a voter that lost every receiver
  end
  n.misses = n.misses + 1
  if n.misses == GIVE_UP then
    nexus.log.info(("node %s: no voter receivers (%s); asking again every %ds"):format(
      node, err or "empty list", RETRY))
  end
  if n.misses >= GIVE_UP then n.next_try = now + RETRY end
end

local function targets()
  if cfg.nodes then
    local out = {}
    for _, id in ipairs(cfg.nodes) do out[#out + 1] = tostring(id) end
    return out
  end
  local out = {}
  for _, view in ipairs(nexus.nodes()) do out[#out + 1] = view.node_id end
  return out
end

local function poll()
  local now = nexus.now()
  for _, node in ipairs(targets()) do
    local n = entry(node)
    if not n.pending and now >= n.next_try then
      n.pending = true
      local ok = nexus.voter_status(node, function(receivers, err) answered(node, n, receivers, err) end)
      if not ok then n.pending = false end
    end
  end
end

nexus.every(INTERVAL, poll)
