'use strict';
/*
 * Conformance cases for the real Node SDK (npm aws-greengrass-core-sdk 1.7.0,
 * stream-manager module, protocol 1.1.0): the same cases as conformance.py.
 *
 *   NODE_PATH=<cache>/node-core-sdk-1.7.0/node_modules node conformance.js
 *
 * Port and token come from STREAM_MANAGER_SERVER_PORT / AWS_CONTAINER_AUTHORIZATION_TOKEN.
 * Output: `PASS <case>`, `FAIL <case>: <reason>`, `SKIP <case>: <reason>`, then
 * `SUMMARY pass=<n> fail=<n> skip=<n>`; exit status 0 only if nothing failed. No case skips
 * now: those this SDK cannot send are left out (named on stderr); under CI=true
 * test_conformance.py fails any skip.
 *
 * Describe results are compared through the SDK's own model: the expected wire map
 * goes through MessageStreamInfo.fromMap(...).asMap(), like the real answer does.
 */
const crypto = require('crypto');
const { isDeepStrictEqual, inspect } = require('util');
const sm = require('aws-greengrass-core-sdk/stream-manager');

const LONG_POLL_MS = 20000; // a wait that a correct server ends early (satisfied by appends)
const DEFAULT_MAX_SIZE = 268435456;
const DEFAULT_SEGMENT = 16777216;
const LIVE = new Set(); // streams this program believes exist on the server

// The SDK logs every connection event through this logger; keep it for diagnostics only.
const sdkLog = [];
const quietLogger = {
    error: (...a) => sdkLog.push(['error', a]),
    warn: (...a) => sdkLog.push(['warn', a]),
    info: () => {},
    debug: () => {},
};

// The client constructor starts connecting with a promise nobody awaits; a refused
// connection therefore also surfaces as an unhandled rejection (a tick after onError).
// One such ConnectFailedException is expected per deliberately refused connection;
// any other unhandled rejection is reported at the end.
let refusalsExpected = 0;
const unexpectedRejections = [];
process.on('unhandledRejection', (reason) => {
    if (refusalsExpected > 0 && reason instanceof sm.ConnectFailedException) {
        refusalsExpected -= 1;
    } else {
        unexpectedRejections.push(reason);
    }
});

class CaseFailure extends Error {}

function need(cond, msg) {
    if (!cond) throw new CaseFailure(msg);
}

function show(v) {
    return inspect(v, { depth: 6, breakLength: Infinity, maxArrayLength: 20, maxStringLength: 200 });
}

function eq(got, expected, what) {
    if (!isDeepStrictEqual(got, expected)) {
        throw new CaseFailure(`${what}: got ${show(got)}, expected ${show(expected)}`);
    }
}

/** Connect a client; resolves once connected, rejects with what onError reports. */
function connect() {
    return new Promise((resolve, reject) => {
        const c = new sm.StreamManagerClient({
            logger: quietLogger,
            onConnectCb: () => resolve(c),
            onErrorCb: (e) => reject(e),
        });
    });
}

async function raises(excName, promiseFn, message = null) {
    let result;
    try {
        result = await promiseFn();
    } catch (e) {
        if (!(e instanceof sm[excName]) || e.constructor.name !== excName) {
            throw new CaseFailure(`expected ${excName}, got ${e && e.constructor ? e.constructor.name : typeof e}: ${e && e.message}`);
        }
        if (message !== null && e.message !== message) {
            throw new CaseFailure(`${excName} message ${show(e.message)}, expected ${show(message)}`);
        }
        return e;
    }
    throw new CaseFailure(`expected ${excName}, but the call succeeded and returned ${show(result)}`);
}

function opts(start = null, minCount = 1, maxCount = null, timeout = 0) {
    const o = new sm.ReadMessagesOptions().withMinMessageCount(minCount).withReadTimeoutMillis(timeout);
    if (start !== null) o.withDesiredStartSequenceNumber(start);
    if (maxCount !== null) o.withMaxMessageCount(maxCount);
    return o;
}

function definition(name, strategy = 0, extra = {}) {
    const d = new sm.MessageStreamDefinition().withName(name)
        .withStrategyOnFull(strategy === 0 ? sm.StrategyOnFull.RejectNewData : sm.StrategyOnFull.OverwriteOldestData);
    if ('maxSize' in extra) d.withMaxSize(extra.maxSize);
    if ('streamSegmentSize' in extra) d.withStreamSegmentSize(extra.streamSegmentSize);
    if ('timeToLiveMillis' in extra) d.withTimeToLiveMillis(extra.timeToLiveMillis);
    if ('persistence' in extra) d.withPersistence(extra.persistence);
    if ('flushOnWrite' in extra) d.withFlushOnWrite(extra.flushOnWrite);
    if ('exportDefinition' in extra) d.withExportDefinition(extra.exportDefinition);
    return d;
}

async function create(c, d) {
    await c.createMessageStream(d);
    LIVE.add(d.name);
}

async function del(c, name) {
    await c.deleteMessageStream(name);
    LIVE.delete(name);
}

/** Wire definition weir must echo: what the client sent, with SPEC defaults filled. */
function storedDefinition(d) {
    const w = d.asMap();
    if (!('maxSize' in w)) w.maxSize = DEFAULT_MAX_SIZE;
    if (!('streamSegmentSize' in w)) w.streamSegmentSize = DEFAULT_SEGMENT;
    if (!('persistence' in w)) w.persistence = 0;
    if (!('flushOnWrite' in w)) w.flushOnWrite = false;
    return w;
}

function exportStatus(identifier, start = null) {
    return {
        exportConfigIdentifier: identifier,
        lastExportedSequenceNumber: (start === null ? 0 : start) - 1,
        exportedBytesFromStream: 0,
        exportedMessagesCount: 0,
    };
}

function storage(oldest, newest, totalBytes) {
    return { oldestSequenceNumber: oldest, newestSequenceNumber: newest, totalBytes };
}

async function checkDescribe(c, name, wireDefinition, wireStorage, wireStatuses) {
    const got = (await c.describeMessageStream(name)).asMap();
    const want = sm.MessageStreamInfo.fromMap({
        definition: wireDefinition, storageStatus: wireStorage, exportStatuses: wireStatuses,
    }).asMap();
    for (const key of ['definition', 'storageStatus', 'exportStatuses']) {
        eq(got[key], want[key], `describe(${name}).${key}`);
    }
}

/** expected: array of [sequenceNumber, Buffer payload]. */
function checkMessages(msgs, name, expected) {
    need(Array.isArray(msgs), `read returned ${show(msgs)}, expected an array`);
    const got = msgs.map((m) => [m.sequenceNumber, m.payload]);
    const same = got.length === expected.length
        && got.every(([s, p], i) => s === expected[i][0] && Buffer.isBuffer(p) && p.equals(expected[i][1]));
    need(same, `messages (seq, payload) read from ${name}: got ${show(got.map(([s, p]) => [s, short(p)]))}, `
        + `expected ${show(expected.map(([s, p]) => [s, short(p)]))}`);
    for (const m of msgs) {
        eq(m.streamName, name, 'message.streamName');
        need(Number.isInteger(m.ingestTime) && m.ingestTime > 1500000000000,
            `ingestTime ${show(m.ingestTime)} is not a millisecond epoch`);
    }
    const times = msgs.map((m) => m.ingestTime);
    eq(times, [...times].sort((a, b) => a - b), 'ingest times in sequence order');
}

function short(p) {
    if (!Buffer.isBuffer(p)) return p;
    return p.length > 24 ? `<${p.length} bytes ${p.subarray(0, 8).toString('hex')}...>` : p.toString('hex');
}

const total = (payloads) => payloads.reduce((n, p) => n + p.length + 24, 0);
const nemMessage = (available, start, min) => `${available} messages available from sequence number ${start}, fewer than minMessageCount ${min}`;
const B = (s) => Buffer.from(s);

// ---------------------------------------------------------------- cases

const CASES = [];
const kase = (name, fn) => CASES.push([name, fn]);

kase('list-streams-empty', async (c) => {
    eq(await c.listStreams(), [], 'listStreams on a fresh store');
});

kase('create-describe-defaults', async (c) => {
    const d = definition('cf-defaults', 0);
    await create(c, d);
    await checkDescribe(c, 'cf-defaults', storedDefinition(d), storage(0, -1, 0), []);
});

kase('create-describe-exports', async (c) => {
    await create(c, definition('cf-status', 1, { persistence: sm.Persistence.Memory }));
    const exports = new sm.ExportDefinition()
        .withHttp([new sm.HTTPConfig().withIdentifier('HttpExport').withUri('http://127.0.0.1:9/unused').withBatchSize(10)
            .withBatchIntervalMillis(60000).withPriority(5).withStartSequenceNumber(3).withDisabled(true)
            .withExportFormat(sm.ExportFormat.JSON_BATCHED)])
        .withIotAnalytics([new sm.IoTAnalyticsConfig().withIdentifier('IotAExport').withIotChannel('channel')
            .withIotMsgIdPrefix('prefix').withBatchSize(5).withPriority(2)])
        .withKinesis([
            new sm.KinesisConfig().withIdentifier('KinesisA').withKinesisStreamName('streamA'),
            new sm.KinesisConfig().withIdentifier('KinesisB').withKinesisStreamName('streamB').withBatchSize(100)
                .withStartSequenceNumber(7).withDisabled(false)])
        .withIotSitewise([new sm.IoTSiteWiseConfig().withIdentifier('SiteWiseExport').withBatchSize(5)
            .withBatchIntervalMillis(120000)])
        .withS3TaskExecutor([new sm.S3ExportTaskExecutorConfig().withIdentifier('S3Export')
            .withSizeThresholdForMultipartUploadBytes(5242880).withPriority(1).withDisabled(false)
            .withStatusConfig(new sm.StatusConfig().withStatusLevel(sm.StatusLevel.INFO).withStatusStreamName('cf-status'))]);
    const d = definition('cf-exports', 1, {
        maxSize: 1048576, streamSegmentSize: 65536, timeToLiveMillis: 3600000,
        persistence: sm.Persistence.File, flushOnWrite: true, exportDefinition: exports,
    });
    await create(c, d);
    await checkDescribe(c, 'cf-exports', storedDefinition(d), storage(0, -1, 0), [
        exportStatus('HttpExport', 3), exportStatus('IotAExport'), exportStatus('KinesisA'),
        exportStatus('KinesisB', 7), exportStatus('SiteWiseExport'), exportStatus('S3Export')]);
});

kase('create-existing-stream', async (c) => {
    await raises('InvalidRequestException', () => c.createMessageStream(definition('cf-defaults', 1)),
        'message stream cf-defaults already exists');
    await checkDescribe(c, 'cf-defaults', storedDefinition(definition('cf-defaults', 0)), storage(0, -1, 0), []);
});

const SEQ_PAYLOADS = [B('first'), B('second'), Buffer.from([0, 1, 2]), B('fourth message'), B('5')];

kase('append-sequence-numbers', async (c) => {
    const d = definition('cf-seq');
    await create(c, d);
    const got = [];
    for (const p of SEQ_PAYLOADS) got.push(await c.appendMessage('cf-seq', p));
    eq(got, [0, 1, 2, 3, 4], 'sequence numbers returned by append');
    await checkDescribe(c, 'cf-seq', storedDefinition(d), storage(0, 4, total(SEQ_PAYLOADS)), []);
});

kase('read-exact-range', async (c) => {
    checkMessages(await c.readMessages('cf-seq', opts(0, 5, 5)), 'cf-seq', SEQ_PAYLOADS.map((p, i) => [i, p]));
});

kase('read-absent-max-means-min', async (c) => {
    checkMessages(await c.readMessages('cf-seq', opts(1, 2)), 'cf-seq', [[1, SEQ_PAYLOADS[1]], [2, SEQ_PAYLOADS[2]]]);
});

kase('read-between-min-and-max', async (c) => {
    let msgs = await c.readMessages('cf-seq', opts(0, 1, 3));
    need(msgs.length >= 1 && msgs.length <= 3, `min 1 max 3 returned ${msgs.length} messages`);
    checkMessages(msgs, 'cf-seq', SEQ_PAYLOADS.map((p, i) => [i, p]).slice(0, msgs.length));
    msgs = await c.readMessages('cf-seq', opts(3, 1, 100));
    need(msgs.length >= 1 && msgs.length <= 2, `start 3, min 1, max 100 returned ${msgs.length} messages (2 exist)`);
    checkMessages(msgs, 'cf-seq', [[3, SEQ_PAYLOADS[3]], [4, SEQ_PAYLOADS[4]]].slice(0, msgs.length));
});

kase('read-without-options', async (c) => {
    checkMessages(await c.readMessages('cf-seq'), 'cf-seq', [[0, SEQ_PAYLOADS[0]]]);
});

kase('read-timeout0-not-enough', async (c) => {
    await raises('NotEnoughMessagesException', () => c.readMessages('cf-seq', opts(5, 1)), nemMessage(0, 5, 1));
    await raises('NotEnoughMessagesException', () => c.readMessages('cf-seq', opts(0, 6, 10)), nemMessage(5, 0, 6));
    await raises('NotEnoughMessagesException', () => c.readMessages('cf-seq', opts(1000, 1)), nemMessage(0, 1000, 1));
});

kase('long-poll-satisfied-by-append-on-same-client', async (c) => {
    await create(c, definition('cf-longpoll'));
    eq(await c.appendMessage('cf-longpoll', B('before')), 0, 'first append');
    // readMessages() writes its request frame synchronously before returning the
    // promise, so the appends below are sent on the same socket after it.
    const read = c.readMessages('cf-longpoll', opts(1, 2, 2, LONG_POLL_MS));
    let settled = null;
    read.then((m) => { settled = ['resolved', m]; }, (e) => { settled = ['rejected', e]; });
    eq(await c.appendMessage('cf-longpoll', B('during-1')), 1, 'append while the read waits');
    if (settled !== null && settled[0] === 'rejected') {
        throw new CaseFailure(`the long-poll read ended with ${settled[1].constructor.name}: ${settled[1].message} before the append `
            + 'sent while it waited was answered (requests on one connection not handled concurrently?)');
    }
    need(settled === null, `read settled after one append although minMessageCount is 2: ${show(settled)}`);
    eq(await c.appendMessage('cf-longpoll', B('during-2')), 2, 'second append while the read waits');
    let msgs;
    try {
        msgs = await read;
    } catch (e) {
        throw new CaseFailure(`long-poll read failed instead of being satisfied by the appends: ${e.constructor.name}: ${e.message}`);
    }
    checkMessages(msgs, 'cf-longpoll', [[1, B('during-1')], [2, B('during-2')]]);
});

kase('long-poll-times-out', async (c) => {
    const started = Date.now();
    await raises('NotEnoughMessagesException', () => c.readMessages('cf-longpoll', opts(3, 1, null, 1000)), nemMessage(0, 3, 1));
    return `answered after ${((Date.now() - started) / 1000).toFixed(2)}s`;
});

kase('missing-stream-not-found', async (c) => {
    const msg = 'message stream cf-missing does not exist';
    await raises('ResourceNotFoundException', () => c.describeMessageStream('cf-missing'), msg);
    await raises('ResourceNotFoundException', () => c.appendMessage('cf-missing', B('x')), msg);
    await raises('ResourceNotFoundException', () => c.readMessages('cf-missing', opts(0)), msg);
    await raises('ResourceNotFoundException', () => c.readMessages('cf-missing'), msg);
    await raises('ResourceNotFoundException', () => c.deleteMessageStream('cf-missing'), msg);
    await raises('ResourceNotFoundException', () => c.updateMessageStream(definition('cf-missing')), msg);
});

kase('update-ttl-strategy-exports', async (c) => {
    const d = definition('cf-update', 0, {
        exportDefinition: new sm.ExportDefinition().withKinesis([
            new sm.KinesisConfig().withIdentifier('K1').withKinesisStreamName('s1')]),
    });
    await create(c, d);
    const payloads = [B('u1'), B('u2')];
    for (const p of payloads) await c.appendMessage('cf-update', p);
    const updated = definition('cf-update', 1, {
        maxSize: 10485760, timeToLiveMillis: 120000, persistence: sm.Persistence.File, flushOnWrite: true,
        exportDefinition: new sm.ExportDefinition()
            .withIotAnalytics([new sm.IoTAnalyticsConfig().withIdentifier('IotA1').withIotChannel('ch')])
            .withKinesis([new sm.KinesisConfig().withIdentifier('K1').withKinesisStreamName('s1').withBatchSize(50)
                .withDisabled(true)]),
    });
    await c.updateMessageStream(updated);
    await checkDescribe(c, 'cf-update', storedDefinition(updated), storage(0, 1, total(payloads)),
        [exportStatus('IotA1'), exportStatus('K1')]);
    checkMessages(await c.readMessages('cf-update', opts(0, 2)), 'cf-update', payloads.map((p, i) => [i, p]));
});

kase('update-persistence-not-allowed', async (c) => {
    const before = (await c.describeMessageStream('cf-update')).asMap();
    const changed = definition('cf-update', 1, { maxSize: 10485760, timeToLiveMillis: 120000, persistence: sm.Persistence.Memory });
    const e = await raises('UpdateNotAllowedException', () => c.updateMessageStream(changed),
        'persistence of message stream cf-update cannot be changed');
    need(e instanceof sm.InvalidRequestException, 'UpdateNotAllowedException is an InvalidRequestException');
    eq((await c.describeMessageStream('cf-update')).asMap(), before, 'describe after the refused update');
});

kase('update-max-size-below-current-bytes', async (c) => {
    const d = definition('cf-update-size');
    await create(c, d);
    const payloads = [0, 1, 2].map((i) => Buffer.alloc(600, i)); // 3 * 624 = 1872 bytes stored
    for (const p of payloads) await c.appendMessage('cf-update-size', p);
    await raises('UpdateNotAllowedException', () => c.updateMessageStream(definition('cf-update-size', 0, { maxSize: 1024 })));
    await checkDescribe(c, 'cf-update-size', storedDefinition(d), storage(0, 2, total(payloads)), []);
    const bigger = definition('cf-update-size', 0, { maxSize: 4096 });
    await c.updateMessageStream(bigger);
    await checkDescribe(c, 'cf-update-size', storedDefinition(bigger), storage(0, 2, total(payloads)), []);
    checkMessages(await c.readMessages('cf-update-size', opts(0, 3)), 'cf-update-size', payloads.map((p, i) => [i, p]));
});

kase('reject-new-data-when-full', async (c) => {
    const d = definition('cf-reject', 0, { maxSize: 1024, streamSegmentSize: 1024 });
    await create(c, d);
    const accepted = [];
    let rejected = null;
    for (let i = 0; i < 20; i += 1) { // 20 * 124 bytes is well over 1024
        const p = Buffer.alloc(100, 65 + i);
        try {
            eq(await c.appendMessage('cf-reject', p), i, `append #${i} sequence number`);
        } catch (e) {
            if (e instanceof CaseFailure) throw e;
            rejected = e;
            break;
        }
        accepted.push(p);
    }
    need(rejected !== null, '20 appends of 124 bytes into a 1024-byte RejectNewData stream were all accepted');
    eq(rejected.constructor.name, 'InvalidRequestException', `exception type of the refused append (${rejected.message})`);
    need(accepted.length > 0, 'the very first 100-byte append into an empty 1024-byte stream was refused');
    need(total(accepted) <= 1024, `stream holds ${total(accepted)} bytes, above maxSize 1024`);
    // Still full: the same 100-byte append is refused again.
    await raises('InvalidRequestException', () => c.appendMessage('cf-reject', Buffer.alloc(100, 90)));
    await checkDescribe(c, 'cf-reject', storedDefinition(d), storage(0, accepted.length - 1, total(accepted)), []);
    checkMessages(await c.readMessages('cf-reject', opts(0, accepted.length, accepted.length)), 'cf-reject',
        accepted.map((p, i) => [i, p]));
    return `${accepted.length} messages accepted`;
});

kase('overwrite-oldest-data', async (c) => {
    const d = definition('cf-overwrite', 1, { maxSize: 4096, streamSegmentSize: 1024 });
    await create(c, d);
    const payloads = [];
    for (let i = 0; i < 60; i += 1) payloads.push(B(String(i).padStart(3, '0').repeat(34).slice(0, 100)));
    const oldestSeen = [];
    for (let i = 0; i < payloads.length; i += 1) {
        eq(await c.appendMessage('cf-overwrite', payloads[i]), i, `append #${i} sequence number`);
        const st = (await c.describeMessageStream('cf-overwrite')).storageStatus;
        oldestSeen.push(st.oldestSequenceNumber);
        eq(st.newestSequenceNumber, i, `newest sequence number after append #${i}`);
        need(st.totalBytes <= 4096, `totalBytes ${st.totalBytes} above maxSize 4096 after append #${i}`);
        eq(st.totalBytes, total(payloads.slice(st.oldestSequenceNumber, i + 1)), `totalBytes after append #${i}`);
    }
    eq(oldestSeen, [...oldestSeen].sort((a, b) => a - b), 'oldestSequenceNumber over time (must never go back)');
    const oldest = oldestSeen[oldestSeen.length - 1];
    need(oldest > 0, 'oldestSequenceNumber stayed 0 after writing 7440 bytes into a 4096-byte stream');
    checkMessages(await c.readMessages('cf-overwrite', opts(0, 1, 1)), 'cf-overwrite', [[oldest, payloads[oldest]]]);
    const n = 60 - oldest;
    checkMessages(await c.readMessages('cf-overwrite', opts(oldest, n, n)), 'cf-overwrite',
        payloads.slice(oldest).map((p, i) => [oldest + i, p]));
    return `oldest went 0 -> ${oldest}`;
});

kase('payload-1-byte-and-1-MiB', async (c) => {
    const d = definition('cf-payloads', 1);
    await create(c, d);
    const big = crypto.randomBytes(1 << 20);
    const payloads = [Buffer.from([0]), Buffer.from([255]), big];
    for (let i = 0; i < payloads.length; i += 1) eq(await c.appendMessage('cf-payloads', payloads[i]), i, 'append sequence number');
    const msgs = await c.readMessages('cf-payloads', opts(0, 3, 3));
    need(msgs.length === 3 && msgs[2].payload.equals(big), `1 MiB payload did not round-trip byte for byte (got ${msgs.length} messages)`);
    checkMessages(msgs, 'cf-payloads', payloads.map((p, i) => [i, p]));
    await checkDescribe(c, 'cf-payloads', storedDefinition(d), storage(0, 2, total(payloads)), []);
});

kase('memory-persistence', async (c) => {
    const d = definition('cf-memory', 1, { persistence: sm.Persistence.Memory });
    await create(c, d);
    const payloads = [B('m0'), B('m1'), B('m2')];
    const seqs = [];
    for (const p of payloads) seqs.push(await c.appendMessage('cf-memory', p));
    eq(seqs, [0, 1, 2], 'sequence numbers');
    checkMessages(await c.readMessages('cf-memory', opts(0, 3)), 'cf-memory', payloads.map((p, i) => [i, p]));
    await checkDescribe(c, 'cf-memory', storedDefinition(d), storage(0, 2, total(payloads)), []);
});

kase('delete-then-recreate-restarts-at-0', async (c) => {
    const d = definition('cf-recreate');
    await create(c, d);
    for (const p of ['old0', 'old1', 'old2']) await c.appendMessage('cf-recreate', B(p));
    await del(c, 'cf-recreate');
    await raises('ResourceNotFoundException', () => c.describeMessageStream('cf-recreate'));
    await raises('ResourceNotFoundException', () => c.deleteMessageStream('cf-recreate'));
    await create(c, d);
    await checkDescribe(c, 'cf-recreate', storedDefinition(d), storage(0, -1, 0), []);
    eq(await c.appendMessage('cf-recreate', B('new0')), 0, 'first sequence number after recreate');
    checkMessages(await c.readMessages('cf-recreate', opts(0, 1, 10)), 'cf-recreate', [[0, B('new0')]]);
});

kase('text-payload-stored-as-utf8', null); // greengrasssdk 1.5.0 only (Node type-checks payloads)
kase('invalid-field-value-rejected', null); // greengrasssdk 1.5.0 only (Node validates enums)

kase('wrong-or-missing-token-refused', async (c) => {
    const good = process.env.AWS_CONTAINER_AUTHORIZATION_TOKEN;
    const notes = [];
    try {
        for (const token of ['not-the-token', undefined]) {
            if (token === undefined) delete process.env.AWS_CONTAINER_AUTHORIZATION_TOKEN;
            else process.env.AWS_CONTAINER_AUTHORIZATION_TOKEN = token;
            // Node reports a refused handshake only through onError callbacks (and an
            // unhandled rejection of the constructor's internal connect promise).
            refusalsExpected += 1;
            const e = await raises('ConnectFailedException', () => connect());
            notes.push(`onError got ${e.constructor.name}`);
        }
    } finally {
        process.env.AWS_CONTAINER_AUTHORIZATION_TOKEN = good;
    }
    eq(await c.listStreams(), [...LIVE].sort(), 'listStreams after refused connections');
    return notes.join(', ');
});

kase('multiple-clients-share-streams', async (a) => {
    const b = await connect();
    try {
        await create(a, definition('cf-multi'));
        need((await b.listStreams()).includes('cf-multi'), 'client B does not list the stream client A created');
        eq(await b.appendMessage('cf-multi', B('from-b')), 0, 'append by client B');
        eq(await a.appendMessage('cf-multi', B('from-a')), 1, 'append by client A');
        checkMessages(await a.readMessages('cf-multi', opts(0, 2)), 'cf-multi', [[0, B('from-b')], [1, B('from-a')]]);
        eq((await b.describeMessageStream('cf-multi')).storageStatus.newestSequenceNumber, 1, 'newest seen by client B');
    } finally {
        b.close();
    }
});

kase('list-streams-sorted', async (c) => {
    // Byte-order sort of the names (all ASCII here).
    eq(await c.listStreams(), [...LIVE].sort(), 'listStreams (all streams, ascending)');
});

kase('delete-streams', async (c) => {
    for (const name of [...LIVE].sort()) await del(c, name);
    eq(await c.listStreams(), [], 'listStreams after deleting everything');
});

async function main() {
    const counts = { PASS: 0, FAIL: 0, SKIP: 0 };
    const out = (kind, name, text = '') => {
        counts[kind] += 1;
        process.stdout.write(`${kind} ${name}${text}\n`);
    };
    for (const [name, fn] of CASES) {
        if (fn === null) {
            // Not part of this SDK's run (not a skip: the Node SDK cannot send it).
            process.stderr.write(`n/a ${name}: only greengrasssdk 1.5.0 sends it (no client-side type checks)\n`);
            continue;
        }
        let c = null;
        try {
            c = await connect(); // a fresh connection per case keeps one failure from cascading
            const detail = await fn(c);
            out('PASS', name, detail ? ` (${detail})` : '');
        } catch (e) {
            if (e instanceof CaseFailure) out('FAIL', name, `: ${e.message}`);
            else out('FAIL', name, `: unexpected ${e && e.constructor ? e.constructor.name : typeof e}: ${e && e.message} [${e && e.stack ? e.stack.split('\n').slice(1, 3).join(' | ').trim() : ''}]`);
        } finally {
            if (c !== null) c.close();
        }
    }
    if (unexpectedRejections.length) {
        out('FAIL', 'no-unexpected-async-errors', `: ${unexpectedRejections.map((r) => `${r && r.constructor ? r.constructor.name : typeof r}: ${r && r.message}`).join('; ')}`);
    } else {
        out('PASS', 'no-unexpected-async-errors');
    }
    process.stdout.write(`SUMMARY pass=${counts.PASS} fail=${counts.FAIL} skip=${counts.SKIP}\n`);
    if (counts.FAIL && sdkLog.length) {
        process.stderr.write(`SDK log (errors/warnings):\n${sdkLog.map(([l, a]) => `${l}: ${a.map((x) => (x instanceof Error ? x.stack : show(x))).join(' ')}`).join('\n')}\n`);
    }
    return counts.FAIL ? 1 : 0;
}

main().then((code) => {
    // Clients only half-close their sockets; exit explicitly once the output is flushed.
    process.stdout.write('', () => process.exit(code));
}, (e) => {
    process.stdout.write(`FAIL harness: ${e && e.stack}\n`, () => process.exit(1));
});
