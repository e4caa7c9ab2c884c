-- voter.lua — bundled plugin: watch voter (RTCM) receivers and report dead ones.
--
-- Every interval_seconds it asks each node for its voter receivers (VoterStatus, without
-- blocking anything). Nodes that answer with no receivers give_up_polls times in a row
-- are asked only every retry_seconds afterwards (most nodes have no voter). A round ends
-- at the first request the script's action budget refuses; the next round goes on from
-- that node.
--
-- Alerts (warning), each once per episode:
--   * a receiver silent: RSSI 0 for silent_seconds. With require_activity (the default)
--     only answers where another receiver of the node hears a signal count, from the first
--     such answer until the receiver hears again: an idle channel is not a dead receiver;
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

-- node -> { misses, next_try, pending, receivers = { name -> { missed_since, silent, gone } } }
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

local function heard(node, name, rx)
  if rx.silent then
    alert("info", "Voter receiver hears again", ("Receiver %s on node %s reports a signal again"):format(name, node),
      node, ("voter_heard:%s:%s"):format(node, name))
  end
  rx.missed_since, rx.silent = nil, false
end

-- RSSI 0: with require_activity, only while another receiver hears a signal does it count
-- as missing; the time adds up from the first such answer until the receiver hears again.
local function missed(node, name, rx, now, active)
  if REQUIRE_ACTIVITY and not active then return end
  rx.missed_since = rx.missed_since or now
  if rx.silent or now - rx.missed_since < SILENT then return end
  rx.silent = true
  local why = REQUIRE_ACTIVITY and " while other receivers heard signals" or ""
  alert("warning", "Voter receiver silent",
    ("Receiver %s on node %s has reported RSSI 0 for %ds%s"):format(name, node, math.floor(now - rx.missed_since), why),
    node, ("voter_silent:%s:%s"):format(node, name))
end

-- The decision logic: one VoterStatus answer for `node` at time `now` (seconds).
-- Global so it can be driven directly (tests, or an operator's own poller).
function on_receivers(node, receivers, now)
  node, now = tostring(node), now or nexus.now()
  local n = entry(node)
  local active = false
  for _, r in ipairs(receivers) do
    if (r.rssi or 0) > 0 then active = true end
  end
  local seen = {}
  for _, r in ipairs(receivers) do
    seen[r.name] = true
    local rx = n.receivers[r.name]
    if not rx then
      rx = {}
      n.receivers[r.name] = rx
    elseif rx.gone then
      rx.gone, rx.missed_since = false, nil
      alert("info", "Voter receiver back", ("Receiver %s on node %s is reporting again"):format(r.name, node),
        node, ("voter_back:%s:%s"):format(node, r.name))
    end
    if (r.rssi or 0) > 0 then heard(node, r.name, rx) else missed(node, r.name, rx, now, active) end
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
  -- Ids only: building every node's full view each round is costly on a big fleet.
  return nexus.node_ids()
end

-- Where the last round stopped: a call refused (the script's AMI action budget, or too
-- many answers waiting) ends the round, and the next one starts at that node, so on a
-- fleet of thousands of nodes every node gets its turn and no round walks them all.
local cursor = 0

local function poll()
  local now = nexus.now()
  local list = targets()
  local count = #list
  for i = 1, count do
    local at = (cursor + i - 1) % count + 1
    local node = list[at]
    local n = entry(node)
    if not n.pending and now >= n.next_try then
      n.pending = true
      local ok = nexus.voter_status(node, function(receivers, err) answered(node, n, receivers, err) end)
      if not ok then
        n.pending = false
        cursor = at - 1
        return
      end
    end
  end
end

nexus.every(INTERVAL, poll)
