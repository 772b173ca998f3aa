# Build: compile the TypeScript with every dev dependency.
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json app.ts server.ts worker.ts ./
COPY lib lib
COPY plugins plugins
COPY routes routes
COPY demo demo
COPY client client
RUN npm run build

# Runtime: production dependencies, the compiled code and the demo page; not root.
FROM node:20-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
COPY package.json package-lock.json ./
# fastify and faker are peers of the package (dev dependencies in the lock), which --omit=dev
# leaves out; the standalone server and its demo need them: made dependencies in the image only,
# at the locked versions.
RUN for peer in fastify @faker-js/faker; do \
    npm pkg delete "devDependencies.$peer" \
    && npm pkg set "dependencies.$peer=$(node -p "require('./package-lock.json').packages['node_modules/$peer'].version")" || exit 1; \
  done \
  && npm install --omit=dev --no-audit --no-fund && npm cache clean --force
COPY --from=build /app/dist dist
COPY demo/public demo/public
# Owned by node, so a fresh named volume mounted here is writable by the server.
RUN mkdir uploads && chown node:node uploads
USER node
EXPOSE 8080
CMD ["node", "dist/server.js"]
