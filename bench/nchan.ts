// Nchan (https://nchan.io), the nginx pub/sub module, as a baseline: Debian's libnginx-mod-nchan
// on nginx-light. One nginx per replica with `master_process off` (a single process, so its CPU
// and RSS are read like a Node replica's), WebSocket subscribers on /guest, scaled through the
// same Redis. Events are POSTed to a separate publishing nginx, as fastify-fanout's are written by
// a separate worker: neither system's publishing is counted in its replicas' CPU.
import { existsSync, mkdirSync, writeFileSync } from 'node:fs'
import { delimiter, join } from 'node:path'
import { NCHAN_PUBLISH_PATH } from './systems.js'

const MODULE = process.env.BENCH_NCHAN_MODULE ?? '/usr/lib/nginx/modules/ngx_nchan_module.so'
/** The Redis channel Nchan subscribes a replica to once it has a subscriber (channel id `guest`). */
export const NCHAN_REDIS_CHANNEL = '{channel:/guest}:pubsub'

/** The nginx binary, or why Nchan cannot be measured on this machine. */
export function nchanAvailable (): { nginx: string } | { missing: string } {
  const nginx = (process.env.PATH ?? '').split(delimiter).concat('/usr/sbin').map((dir) => join(dir, 'nginx')).find((file) => existsSync(file))
  if (!nginx) return { missing: 'nginx is not installed' }
  if (!existsSync(MODULE)) return { missing: `the Nchan module is not at ${MODULE}` }
  return { nginx }
}

/** Writes one replica's config into `dir`, with the `locations` its scenario serves; returns nginx's arguments. */
export function nchanServer (dir: string, port: number, redisUrl: string, connections: number, locations: string): string[] {
  mkdirSync(join(dir, 'tmp'), { recursive: true })
  const conf = join(dir, 'nginx.conf')
  writeFileSync(conf, `load_module ${MODULE};
master_process off;
daemon off;
worker_processes 1;
worker_rlimit_nofile ${connections + 200};
pid ${join(dir, 'nginx.pid')};
error_log ${join(dir, 'error.log')} warn;
events { worker_connections ${connections + 100}; }
http {
  access_log off;
  client_body_temp_path ${join(dir, 'tmp')};
  upstream redis { nchan_redis_server ${redisUrl}; }
  server {
    listen 127.0.0.1:${port};
${locations}
  }
}
`)
  return ['-p', dir, '-c', conf]
}

/** The guest stream's replica: subscribers on /guest, the publisher at NCHAN_PUBLISH_PATH. */
export function nchanConfig (dir: string, port: number, redisUrl: string, connections: number): string[] {
  return nchanServer(dir, port, redisUrl, connections, `    location = /guest {
      nchan_subscriber websocket;
      nchan_channel_id guest;
      nchan_redis_pass redis;
      # Only what is published after the subscriber joined, as the other systems deliver.
      nchan_subscriber_first_message newest;
    }
    location = ${NCHAN_PUBLISH_PATH} {
      nchan_publisher http;
      nchan_channel_id guest;
      nchan_redis_pass redis;
      nchan_message_buffer_length 100;
      nchan_message_timeout 60s;
    }`)
}
