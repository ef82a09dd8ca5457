'use strict';

// Client side of compat-tests/recorder.py for the Node SDK (npm aws-greengrass-core-sdk 1.7.0).
//
// Environment:
//   RECORDER_PLAN      path of the JSON session plan written by recorder.py
//   RECORDER_NODE_SDK  path of .../node_modules/aws-greengrass-core-sdk/stream-manager
//   STREAM_MANAGER_SERVER_PORT / AWS_CONTAINER_AUTHORIZATION_TOKEN   read by the SDK itself
//   RECORDER_IGNORE_INGEST_TIME=1   do not check message ingestTime (runs against a real server)
//   RECORDER_KEEP_GOING=1           run every step even after a mismatch (still exits non-zero)
//
// Executes every step of the plan through the SDK's public API on one StreamManagerClient,
// compares each result (or exception class + message) with the plan's expectation and exits
// non-zero at the first mismatch (or at the end with RECORDER_KEEP_GOING=1).

const fs = require('fs');

const sm = require(process.env.RECORDER_NODE_SDK);
const plan = JSON.parse(fs.readFileSync(process.env.RECORDER_PLAN, 'utf8'));
const ignoreIngest = process.env.RECORDER_IGNORE_INGEST_TIME === '1';
const keepGoing = process.env.RECORDER_KEEP_GOING === '1';

function normalize(v) {
    if (v === null || v === undefined) return null;
    if (Buffer.isBuffer(v)) return v.toString('hex');
    if (Array.isArray(v)) return v.map(normalize);
    if (typeof v === 'object' && typeof v.asMap === 'function') return normalize(v.asMap());
    if (typeof v === 'object') {
        const out = {};
        for (const [k, x] of Object.entries(v)) out[k] = normalize(x);
        return out;
    }
    return v;
}

function stripIngestTime(v) {
    if (Array.isArray(v)) return v.map(stripIngestTime);
    if (v !== null && typeof v === 'object') {
        const out = {};
        for (const [k, x] of Object.entries(v)) if (k !== 'ingestTime') out[k] = stripIngestTime(x);
        return out;
    }
    return v;
}

function same(a, b) {
    if (Array.isArray(a) || Array.isArray(b)) {
        return Array.isArray(a) && Array.isArray(b) && a.length === b.length && a.every((x, i) => same(x, b[i]));
    }
    if (a !== null && b !== null && typeof a === 'object' && typeof b === 'object') {
        const ka = Object.keys(a).sort();
        const kb = Object.keys(b).sort();
        return same(ka, kb) && ka.every((k) => same(a[k], b[k]));
    }
    return a === b;
}

async function runStep(client, step) {
    const { call, args } = step;
    switch (call) {
        case 'create':
            return client.createMessageStream(sm.MessageStreamDefinition.fromMap(args.definition));
        case 'update':
            return client.updateMessageStream(sm.MessageStreamDefinition.fromMap(args.definition));
        case 'append':
            return client.appendMessage(args.stream, Buffer.from(args.payload.hex, 'hex'));
        case 'read':
            if (args.options === null) return client.readMessages(args.stream);
            return client.readMessages(args.stream, sm.ReadMessagesOptions.fromMap(args.options));
        case 'list':
            return client.listStreams();
        case 'describe':
            return client.describeMessageStream(args.stream);
        case 'delete':
            return client.deleteMessageStream(args.stream);
        default:
            throw new Error(`unknown call ${call}`);
    }
}

const quiet = {
    error: (...a) => console.error('[sdk error]', ...a), info: () => {}, debug: () => {}, warn: (...a) => console.error('[sdk warn]', ...a),
};

const client = new sm.StreamManagerClient({
    logger: quiet,
    onErrorCb: (e) => {
        console.error('connection error:', e);
        process.exitCode = 1;
    },
    onConnectCb: async () => {
        let failed = false;
        for (const step of plan) {
            let got;
            try {
                got = { ok: normalize(await runStep(client, step)) };
            } catch (e) {
                if (!(e instanceof sm.StreamManagerException)) throw e;
                got = { error: e.constructor.name, message: e.message };
            }
            let want = step.expect;
            if (ignoreIngest) {
                got = stripIngestTime(got);
                want = stripIngestTime(want);
            }
            if (same(got, want)) {
                console.log(`ok   ${step.name}`);
            } else {
                console.log(`FAIL ${step.name}\n  expected ${JSON.stringify(want)}\n  got      ${JSON.stringify(got)}`);
                failed = true;
                if (!keepGoing) break;
            }
        }
        client.close();
        if (failed) {
            process.exitCode = 1;
        } else {
            console.log(`all ${plan.length} steps as expected`);
        }
    },
});
